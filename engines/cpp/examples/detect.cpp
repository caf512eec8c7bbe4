// m2det_detect_example: run M2Det on images and print one JSON line per image.
//   m2det_detect_example MODEL IMAGE... [--backend tensorrt|openvino] [--plugin-lib LIB]
//       [--allow-host-code] [--precision f32|bf16|auto] [--threads N]
// MODEL: a TensorRT plan of an NMS graph, or an ONNX file (OpenVINO). Without OpenCV the example
// reads uncompressed BMP and binary PPM files only.
#include "image_file.h"
#include "m2det/detector.h"

#include <cstdio>
#include <exception>
#include <iomanip>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace
{

struct Args
{
    std::string model;
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
        else if (arg == "--backend" && i + 1 < argc)
        {
            std::string const name = argv[++i];
            if (name != "tensorrt" && name != "openvino")
            {
                throw m2det::Error("--backend must be tensorrt or openvino, not " + name);
            }
            args.options.backend = name == "tensorrt" ? m2det::Backend::kTensorRT : m2det::Backend::kOpenVINO;
        }
        else if (arg == "--precision" && i + 1 < argc)
        {
            args.options.inferencePrecision = argv[++i];
        }
        else if (arg == "--threads" && i + 1 < argc)
        {
            std::string const n = argv[++i];
            if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos || n.size() > 6)
            {
                throw m2det::Error("--threads needs a number >= 0, not " + n);
            }
            args.options.threads = std::stoi(n);
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
        throw m2det::Error("usage: m2det_detect_example MODEL IMAGE... [--backend tensorrt|openvino] "
                           "[--plugin-lib LIB] [--allow-host-code] [--precision f32|bf16|auto] [--threads N]");
    }
    args.model = positional.front();
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

std::string toJson(std::string const& image, std::string const& backend, std::vector<m2det::Detection> const& dets)
{
    std::ostringstream out;
    out << std::setprecision(std::numeric_limits<float>::max_digits10); // floats round-trip exactly
    out << "{\"image\": " << jsonString(image) << ", \"backend\": " << jsonString(backend)
        << ", \"detections\": [";
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
        m2det::Detector detector(args.model, args.options);
        for (std::string const& path : args.images)
        {
            m2det_example::ImageFile const image = m2det_example::readImageFile(path);
            m2det::ImageView const view{image.bgr.data(), image.width, image.height, 0};
            std::cout << toJson(path, detector.backendName(), detector.detect(view)) << '\n';
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        std::cerr << "m2det_detect_example: error: " << e.what() << '\n';
        return 2;
    }
}
