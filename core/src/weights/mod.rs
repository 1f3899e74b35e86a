//! Weight files: safetensors read/write with OpenCLIP names, and a restricted reader for PyTorch `.pt`/`.bin` pickles that runs no pickled code.
