//! Image transforms: decoding and OpenCLIP's validation transform (resize shortest side, centre crop, normalise).
