"""Serving with NVIDIA Triton: model repositories for any artifact (``repository``, configs
validated by ``model_config``), the Python-backend model they carry (``python_model``), the
server bundled in ``nvidia-pytriton`` (``server``), a client runner (``runner``) and the
``m2det-triton`` console script (``cli``)."""
