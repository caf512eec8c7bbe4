// m2det_detect_example: run an M2Det NMS plan on images and print one JSON line per image.
//   m2det_detect_example PLAN IMAGE... [--plugin-lib libm2det_plugins.so] [--labels a,b,c]
#include "m2det/detector.h"

#include <opencv2/imgcodecs.hpp>

#include <cstdio>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace
{

struct Args
{
    std::string plan;
    std::vector<std::string> images;
    m2det::DetectorOptions options;
};

Args parse(int argc, char** argv)
{
    Args args;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i)
    {
        std::string const arg = argv[i];
        if (arg == "--plugin-lib" && i + 1 < argc)
        {
            args.options.pluginLibrary = argv[++i];
        }
        else if (arg == "--allow-host-code")
        {
            args.options.allowEngineHostCode = true;
        }
        else if (!arg.empty() && arg[0] == '-')
        {
            throw m2det::Error("unknown option " + arg);
        }
        else
        {
            positional.push_back(arg);
        }
    }
    if (positional.size() < 2)
    {
        throw m2det::Error(
            "usage: m2det_detect_example PLAN IMAGE... [--plugin-lib LIB] [--allow-host-code]");
    }
    args.plan = positional.front();
    args.images.assign(positional.begin() + 1, positional.end());
    return args;
}

//! `text` as a JSON string literal (quotes, backslashes and control characters escaped).
std::string jsonString(std::string const& text)
{
    std::ostringstream out;
    out << '"';
    for (char const c : text)
    {
        if (c == '"' || c == '\\')
        {
            out << '\\' << c;
        }
        else if (static_cast<unsigned char>(c) < 0x20)
        {
            char code[8];
            std::snprintf(code, sizeof(code), "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
            out << code;
        }
        else
        {
            out << c;
        }
    }
    out << '"';
    return out.str();
}

std::string toJson(std::string const& image, std::vector<m2det::Detection> const& dets)
{
    std::ostringstream out;
    out << "{\"image\": " << jsonString(image) << ", \"detections\": [";
    for (std::size_t i = 0; i < dets.size(); ++i)
    {
        m2det::Detection const& d = dets[i];
        out << (i != 0 ? ", " : "") << "{\"box\": [" << d.x1 << ", " << d.y1 << ", " << d.x2 << ", " << d.y2
            << "], \"score\": " << d.score << ", \"class\": " << d.classId << "}";
    }
    out << "]}";
    return out.str();
}

} // namespace

int main(int argc, char** argv)
{
    try
    {
        Args const args = parse(argc, argv);
        m2det::Detector detector(args.plan, args.options);
        for (std::string const& path : args.images)
        {
            cv::Mat const image = cv::imread(path, cv::IMREAD_COLOR);
            if (image.empty())
            {
                throw m2det::Error("cannot read image " + path);
            }
            std::cout << toJson(path, detector.detect(image)) << '\n';
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        std::cerr << "m2det_detect_example: error: " << e.what() << '\n';
        return 2;
    }
}
