//! Parity of image decoding and OpenCLIP's validation transform with the
//! oracle (PIL + torchvision through `open_clip.image_transform`), on real
//! photographs and on PNGs of every colour mode, plus the decoder's refusals
//! (decompression bombs, corrupt files).
//!
//! The photographs are the two JPEGs that scikit-learn ships in its wheel
//! (`sklearn/datasets/images/{china,flower}.jpg`, 640x427); the oracle
//! re-encodes them at several sizes, orientations, qualities and chroma
//! subsamplings into a scratch directory.

mod common;

use std::fs;
use std::path::Path;

use clipflow_core::transform::{
    decode_image, decode_image_with_limit, Interpolation, ResizeMode, RgbImage, ValTransform,
    OPENAI_DATASET_MEAN, OPENAI_DATASET_STD,
};
use serde_json::Value;

/// Writes the test photographs and, for each (photo, transform settings),
/// the oracle's 8-bit pixels after resize and crop and its normalised f32
/// tensor; prints the list of cases as JSON.
///
/// The oracle converts to RGB right after opening, as OpenCLIP's webdataset
/// pipeline does (`wds.decode("pilrgb")`), so that resizing happens on RGB.
const PHOTO_CASES_ORACLE: &str = r#"
import importlib.util, json, os, shutil, sys
import numpy as np
from PIL import Image
from torchvision.transforms import Compose
from open_clip.transform import image_transform

out = sys.argv[1]
spec = importlib.util.find_spec("sklearn")
if spec is None:
    sys.exit("scikit-learn is not installed in the oracle environment: its sample "
             "photographs are the test images (pip install scikit-learn)")
photo_dir = os.path.join(spec.submodule_search_locations[0], "datasets", "images")
china_path = os.path.join(photo_dir, "china.jpg")
china = Image.open(china_path).convert("RGB")
flower = Image.open(os.path.join(photo_dir, "flower.jpg")).convert("RGB")

photos = []
def jpeg(name, img, **options):
    path = os.path.join(out, name + ".jpg")
    img.save(path, "JPEG", **options)
    photos.append(path)

# The shipped file as it is (4:4:4 chroma).
shutil.copy(china_path, os.path.join(out, "china-original.jpg"))
photos.append(os.path.join(out, "china-original.jpg"))
jpeg("flower-q75-420", flower, quality=75)
jpeg("china-1280x854-q90", china.resize((1280, 854), Image.BICUBIC), quality=90)
jpeg("flower-portrait-q85", flower.transpose(Image.Transpose.TRANSPOSE), quality=85)
jpeg("china-portrait-150x250-q95", china.crop((200, 20, 500, 420)).resize((150, 250), Image.BICUBIC), quality=95)
jpeg("flower-tiny-100x67-q60", flower.resize((100, 67), Image.BICUBIC), quality=60)
jpeg("china-strip-700x200-q80", china.resize((700, 200), Image.BICUBIC), quality=80)
jpeg("flower-422-q90", flower.resize((501, 333), Image.BICUBIC), quality=90, subsampling=1)
jpeg("china-progressive-q85", china.resize((333, 501), Image.BICUBIC), quality=85, progressive=True)
jpeg("flower-grey-q85", flower.convert("L"), quality=85)
# Lossless input, where the decoders cannot differ: only the resampling is compared.
china.transpose(Image.Transpose.TRANSPOSE).resize((301, 452), Image.BICUBIC).save(os.path.join(out, "china-portrait.png"))
photos.append(os.path.join(out, "china-portrait.png"))

settings = [
    {"size": [224, 224], "resize_mode": "shortest", "interpolation": "bicubic"},
    {"size": [224, 224], "resize_mode": "shortest", "interpolation": "bilinear"},
    {"size": [192, 256], "resize_mode": "shortest", "interpolation": "bicubic"},
    {"size": [224, 224], "resize_mode": "longest", "interpolation": "bicubic"},
    {"size": [256, 160], "resize_mode": "longest", "interpolation": "bilinear"},
    {"size": [160, 200], "resize_mode": "squash", "interpolation": "bicubic"},
]

cases = []
for photo in photos:
    for index, setting in enumerate(settings):
        size = setting["size"]
        transform = image_transform(
            size[0] if size[0] == size[1] else tuple(size), is_train=False,
            resize_mode=setting["resize_mode"], interpolation=setting["interpolation"])
        # Everything before ToTensor and Normalize: 8-bit RGB pixels.
        to_pixels = Compose(transform.transforms[:-2])
        img = Image.open(photo).convert("RGB")
        stem = os.path.join(out, f"{os.path.basename(photo)}.{index}")
        pixels = np.asarray(to_pixels(img), dtype=np.uint8)
        assert pixels.shape == (size[0], size[1], 3), pixels.shape
        pixels.tofile(stem + ".pixels")
        transform(img).numpy().astype("<f4").tofile(stem + ".tensor")
        cases.append({"photo": photo, "pixels": stem + ".pixels", "tensor": stem + ".tensor", **setting})
print(json.dumps(cases))
"#;

/// Largest mean absolute difference allowed between our 8-bit pixels and
/// the oracle's, in pixel values (0.5/255 of the range). Resampling is exact
/// (checked on lossless input) and the JPEG decoder is PIL's own algorithm,
/// so this is a bound for other decoders' rounding, not an observed error.
const MAX_MEAN_PIXEL_DIFF: f64 = 0.5;
/// Largest absolute difference allowed on any one pixel value (4/255).
const MAX_PIXEL_DIFF: u8 = 4;

/// Mean and maximum of |a - b| over two equal-length slices.
fn abs_diff_stats<T: Copy>(a: &[T], b: &[T], to_f64: impl Fn(T) -> f64) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "compared buffers differ in length");
    let (sum, max) = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (to_f64(x) - to_f64(y)).abs())
        .fold((0.0, 0.0f64), |(sum, max), d| (sum + d, max.max(d)));
    (sum / a.len() as f64, max)
}

fn read_f32_le(path: &str) -> Vec<f32> {
    fs::read(path)
        .expect("oracle tensor file")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn decode_file(path: &str) -> RgbImage {
    let bytes = fs::read(path).expect("test image written by the oracle");
    decode_image(&bytes, path).unwrap_or_else(|e| panic!("decoding {path}: {e:#}"))
}

#[test]
fn val_transform_matches_open_clip_on_photographs() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let manifest = common::run_oracle(PHOTO_CASES_ORACLE, &[dir.path().to_str().unwrap()]);
    let cases: Vec<Value> = serde_json::from_str(&manifest).expect("oracle prints JSON");
    assert!(
        cases.len() >= 50,
        "expected many photo cases, got {}",
        cases.len()
    );

    // Normalisation divides by std, so a pixel difference d becomes at most
    // d / 255 / min(std) in the tensor; equal pixels give equal f32 values
    // (the same f32 operations in the same order), up to 1e-6 for safety.
    let min_std = OPENAI_DATASET_STD
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    let max_mean_tensor_diff = MAX_MEAN_PIXEL_DIFF / 255.0 / min_std + 1e-6;
    let max_tensor_diff = f64::from(MAX_PIXEL_DIFF) / 255.0 / min_std + 1e-6;

    let mut failures = Vec::new();
    for case in &cases {
        let text = |key: &str| case[key].as_str().expect("string field").to_owned();
        let size = &case["size"];
        let image_size = (
            size[0].as_u64().unwrap() as u32,
            size[1].as_u64().unwrap() as u32,
        );
        let transform = ValTransform::new(
            image_size,
            OPENAI_DATASET_MEAN,
            OPENAI_DATASET_STD,
            text("interpolation").parse::<Interpolation>().unwrap(),
            text("resize_mode").parse::<ResizeMode>().unwrap(),
        );
        let photo = text("photo");
        let label = format!(
            "{} {:?} {} {}",
            Path::new(&photo).file_name().unwrap().to_string_lossy(),
            image_size,
            text("resize_mode"),
            text("interpolation")
        );
        let img = decode_file(&photo);

        let pixels = transform.resize_and_crop(&img);
        assert_eq!(pixels.dimensions(), (image_size.1, image_size.0), "{label}");
        let expected_pixels = fs::read(text("pixels")).expect("oracle pixels");
        let (mean, max) = abs_diff_stats(pixels.as_raw(), &expected_pixels, f64::from);
        println!("{label}: pixels mean |diff| {mean:.4}, max {max}");
        // PIL's resampling is reproduced exactly: on lossless input any
        // difference is a bug in the resize or crop.
        let lossless = photo.ends_with(".png");
        if lossless && max > 0.0 {
            failures.push(format!(
                "{label}: lossless input, pixels differ by up to {max}"
            ));
        }
        if mean > MAX_MEAN_PIXEL_DIFF || max > f64::from(MAX_PIXEL_DIFF) {
            failures.push(format!("{label}: pixels mean {mean:.4} max {max}"));
        }

        let tensor = transform.apply(&img);
        assert_eq!(
            tensor.size(),
            [3, i64::from(image_size.0), i64::from(image_size.1)],
            "{label}"
        );
        let values = Vec::<f32>::try_from(tensor.flatten(0, -1)).expect("f32 tensor");
        let expected = read_f32_le(&text("tensor"));
        let (mean, max) = abs_diff_stats(&values, &expected, f64::from);
        if mean > max_mean_tensor_diff || max > max_tensor_diff {
            failures.push(format!("{label}: tensor mean {mean:.6} max {max:.6}"));
        }
    }
    assert!(
        failures.is_empty(),
        "outside tolerance:\n{}",
        failures.join("\n")
    );
}

/// Writes PNGs (and a CMYK JPEG and a lossless WebP) in every colour mode PIL reads, with
/// PIL's `.convert('RGB')` pixels beside each; prints the list as JSON.
const COLOUR_MODES_ORACLE: &str = r#"
import json, os, struct, sys, zlib
import numpy as np
from PIL import Image

out = sys.argv[1]
rng = np.random.default_rng(0)
rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
rgba = rgb.copy(); rgba.putalpha(Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)))
grey = rgb.convert("L")
images = {
    "grey": grey,
    "grey-alpha": rgba.convert("LA"),
    "rgba": rgba,
    "palette": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=50),
    "palette-transparent": rgba.convert("P", palette=Image.Palette.ADAPTIVE, colors=50),
    "one-bit": grey.convert("1"),
    "grey-16bit": Image.fromarray(rng.integers(0, 600, (37, 53), dtype=np.uint16)),
}
cases = []
for name, img in images.items():
    path = os.path.join(out, name + ".png")
    img.save(path)
    cases.append((name, path))

# 16-bit RGB, which PIL cannot write: a PNG built by hand.
def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
deep = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in deep)
path = os.path.join(out, "rgb-16bit.png")
with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 11, 9, 16, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
cases.append(("rgb-16bit", path))

path = os.path.join(out, "cmyk.jpg")
rgb.convert("CMYK").save(path, "JPEG", quality=90)
cases.append(("cmyk-jpeg", path))

path = os.path.join(out, "lossless.webp")
rgb.save(path, "WEBP", lossless=True)
cases.append(("lossless-webp", path))

listed = []
for name, path in cases:
    opened = Image.open(path)
    expected = path + ".rgb"
    np.asarray(opened.convert("RGB"), dtype=np.uint8).tofile(expected)
    listed.append({"name": name, "mode": opened.mode, "path": path, "expected": expected})
print(json.dumps(listed))
"#;

#[test]
fn colour_modes_convert_to_rgb_like_pil() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let listing = common::run_oracle(COLOUR_MODES_ORACLE, &[dir.path().to_str().unwrap()]);
    let cases: Vec<Value> = serde_json::from_str(&listing).expect("oracle prints JSON");
    assert_eq!(cases.len(), 10);
    for case in &cases {
        let (name, mode) = (
            case["name"].as_str().unwrap(),
            case["mode"].as_str().unwrap(),
        );
        let img = decode_file(case["path"].as_str().unwrap());
        let expected = fs::read(case["expected"].as_str().unwrap()).expect("oracle pixels");
        assert_eq!(
            img.as_raw(),
            &expected,
            "{name} (PIL mode {mode}) differs from PIL's convert('RGB')"
        );
    }
}

/// A PNG and a JPEG whose headers claim 20000 x 20000 pixels, more than PIL
/// accepts, written into argv[1]; the oracle checks that PIL refuses them.
const BOMBS_ORACLE: &str = r#"
import io, os, struct, sys, zlib
from PIL import Image
def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
       + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b""))
small = io.BytesIO()
Image.new("RGB", (16, 16)).save(small, "JPEG")
jpeg = bytearray(small.getvalue())
sof = jpeg.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
jpeg[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
for name, data in (("bomb.png", png), ("bomb.jpg", bytes(jpeg))):
    path = os.path.join(sys.argv[1], name)
    open(path, "wb").write(data)
    try:
        Image.open(path)
        sys.exit(f"PIL accepted {name}")
    except Image.DecompressionBombError:
        print(name)
"#;

#[test]
fn decompression_bombs_are_refused_naming_the_source() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let refused = common::run_oracle(BOMBS_ORACLE, &[dir.path().to_str().unwrap()]);
    assert_eq!(
        refused.split_whitespace().collect::<Vec<_>>(),
        ["bomb.png", "bomb.jpg"]
    );
    for name in ["bomb.png", "bomb.jpg"] {
        let bytes = fs::read(dir.path().join(name)).unwrap();
        let source = format!("shard-0007.tar:{name}");
        let error =
            decode_image(&bytes, &source).expect_err("a 400-megapixel image must be refused");
        let message = format!("{error:#}");
        assert!(message.contains(&source), "{message}");
        assert!(message.contains("decompression bomb"), "{message}");
    }

    // The limit is the caller's to lower: a 16x16 image above a 255-pixel limit.
    let small = write_png_bytes(&RgbImage::new(16, 16));
    assert!(decode_image_with_limit(&small, "small.png", 255).is_err());
    assert!(decode_image_with_limit(&small, "small.png", 256).is_ok());
}

fn write_png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encoding a PNG in memory");
    bytes.into_inner()
}

/// Prints a small photo-like JPEG (from PIL) as hex.
const SMALL_JPEG_ORACLE: &str = r#"
import io
import numpy as np
from PIL import Image
gradient = np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8) * 2
out = io.BytesIO()
Image.fromarray(np.stack([gradient, 255 - gradient, gradient // 2], axis=-1)).save(out, "JPEG")
print(out.getvalue().hex())
"#;

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits"))
        .collect()
}

#[test]
fn corrupt_files_give_errors_naming_the_source() {
    let jpeg = from_hex(common::run_oracle(SMALL_JPEG_ORACLE, &[]).trim());
    assert!(decode_image(&jpeg, "whole.jpg").is_ok());
    let png = write_png_bytes(&RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([x as u8 * 6, y as u8 * 8, 100])
    }));
    let mut garbled_png = png.clone();
    for byte in &mut garbled_png[60..] {
        *byte ^= 0x5a;
    }
    let mut jpeg_header_then_noise = vec![0xff, 0xd8, 0xff, 0xe0];
    jpeg_header_then_noise.extend((0..500u32).map(|i| (i * 7919 % 251) as u8));

    let corrupt: [(&str, &[u8]); 6] = [
        ("truncated.jpg", &jpeg[..jpeg.len() * 2 / 3]),
        ("empty.jpg", &[]),
        ("text.jpg", b"this is not an image at all"),
        ("truncated.png", &png[..png.len() / 2]),
        ("garbled.png", &garbled_png),
        ("noise.jpg", &jpeg_header_then_noise),
    ];
    for (source, bytes) in corrupt {
        let error = decode_image(bytes, source)
            .err()
            .unwrap_or_else(|| panic!("{source} decoded without error"));
        let message = format!("{error:#}");
        assert!(
            message.contains(source),
            "error for {source} does not name it: {message}"
        );
    }
}
