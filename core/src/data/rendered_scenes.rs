//! A small image-text dataset made from nothing: rendered scenes of one
//! coloured shape on a plain background, with captions that say what is
//! drawn in varied wording. `clipflow quickstart` trains on it and
//! `clipflow make-scenes` writes it for a look.
//!
//! [`write_scene_dataset`] writes, under its folder:
//! - `shards/scenes-NNNNN.tar`: WebDataset shards of `KEY.png` + `KEY.txt`
//!   samples, with `shards/sizes.json` as OpenCLIP's `get_dataset_size`
//!   reads it;
//! - `zeroshot/<class>/NNN.png`: held-out images in ImageFolder layout, one
//!   folder per colour-and-shape class (`red_circle`), drawn from another
//!   random stream than the training images;
//! - `zeroshot.json`: the class names (in ImageFolder's label order) and the
//!   prompt templates for zero-shot classification.
//!
//! Everything follows from the seed: the same spec writes the same bytes.
//! Each image is drawn from its own random stream (seed, set, index), so
//! images do not depend on the order they are made in.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::tar_writer::TarWriter;

/// How much to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneDatasetSpec {
    /// Training image-caption pairs, over all shards.
    pub train_samples: usize,
    /// Samples per shard (the last shard holds the rest).
    pub samples_per_shard: usize,
    /// Held-out images per class.
    pub zeroshot_per_class: usize,
    /// Width and height of every image, in pixels.
    pub image_size: u32,
    pub seed: u64,
}

impl Default for SceneDatasetSpec {
    fn default() -> Self {
        SceneDatasetSpec {
            train_samples: 10_000,
            samples_per_shard: 1_000,
            zeroshot_per_class: 10,
            image_size: 64,
            seed: 0,
        }
    }
}

/// What [`write_scene_dataset`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneDataset {
    /// The shards as a brace pattern (`DIR/shards/scenes-{00000..00009}.tar`),
    /// as `--train-data` takes it.
    pub train_shards: String,
    pub num_train_samples: u64,
    /// The ImageFolder root of the held-out images.
    pub zeroshot_dir: PathBuf,
    /// Class names (`red circle`); the i-th is label i of ImageFolder, which
    /// sorts the folders (`red_circle`) by name.
    pub class_names: Vec<String>,
    /// Zero-shot prompt templates; `{}` stands for the class name.
    pub templates: Vec<String>,
}

/// The shape colours: name and RGB.
const COLOURS: [(&str, [u8; 3]); 5] = [
    ("red", [220, 40, 40]),
    ("green", [40, 175, 60]),
    ("blue", [40, 70, 225]),
    ("yellow", [235, 210, 30]),
    ("purple", [150, 55, 195]),
];

/// The backgrounds: name and RGB (each image tints it a little).
const BACKGROUNDS: [(&str, [u8; 3]); 3] = [
    ("white", [238, 236, 232]),
    ("grey", [128, 128, 128]),
    ("black", [28, 28, 30]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
}

const SHAPES: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Cross];

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
        }
    }

    /// Signed distance in pixels from `(x, y)` to the outline of this shape
    /// of "radius" `r` centred at the origin (negative inside). Exact inside
    /// and near edges, which is all the one-pixel antialiasing needs.
    fn distance(self, x: f32, y: f32, r: f32) -> f32 {
        match self {
            Shape::Circle => (x * x + y * y).sqrt() - r,
            Shape::Square => box_distance(x, y, 0.85 * r, 0.85 * r),
            Shape::Triangle => {
                // Equilateral, pointing up, circumradius r; the max of the
                // distances to its three edge lines.
                let (s, c) = (0.866_025_4_f32, 0.5_f32);
                let bottom = y - c * r;
                let right = s * x - c * y - c * r;
                let left = -s * x - c * y - c * r;
                bottom.max(right).max(left)
            }
            Shape::Cross => {
                let arm = 0.32 * r;
                box_distance(x, y, r, arm).min(box_distance(x, y, arm, r))
            }
        }
    }
}

fn box_distance(x: f32, y: f32, half_width: f32, half_height: f32) -> f32 {
    (x.abs() - half_width).max(y.abs() - half_height)
}

/// Zero-shot prompt templates, OpenCLIP-style.
const TEMPLATES: [&str; 5] = [
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a {} on a plain background.",
];

/// Streams of the per-image random generators: training and held-out
/// images never share one.
const TRAIN_STREAM: u64 = 1;
const ZEROSHOT_STREAM: u64 = 2;

/// One drawn scene: what the caption can say about it.
struct Scene {
    colour: usize,
    shape: Shape,
    background: usize,
    size_word: Option<&'static str>,
    place: &'static str,
}

/// Draws a scene (the colour and shape given, or random) into a new image.
fn render_scene(
    size: u32,
    rng: &mut ChaCha8Rng,
    class: Option<(usize, Shape)>,
) -> (RgbImage, Scene) {
    let (colour, shape) = class.unwrap_or_else(|| {
        (
            rng.random_range(0..COLOURS.len()),
            SHAPES[rng.random_range(0..SHAPES.len())],
        )
    });
    let background = rng.random_range(0..BACKGROUNDS.len());
    let tint = |base: [u8; 3], rng: &mut ChaCha8Rng, spread: i32| {
        base.map(|c| (i32::from(c) + rng.random_range(-spread..=spread)).clamp(0, 255) as f32)
    };
    let background_rgb = tint(BACKGROUNDS[background].1, rng, 10);
    let shape_rgb = tint(COLOURS[colour].1, rng, 15);

    let side = size as f32;
    let radius_fraction: f32 = rng.random_range(0.16..0.38);
    let r = radius_fraction * side;
    let margin = r + 2.0;
    let cx = rng.random_range(margin..=(side - margin).max(margin));
    let cy = rng.random_range(margin..=(side - margin).max(margin));

    // Background with mild noise: each random byte gives a shift of -3..=3.
    let mut pixels = vec![0u8; (size * size * 3) as usize];
    let mut noise = [0u8; 4096];
    for (chunk_index, chunk) in pixels.chunks_mut(noise.len()).enumerate() {
        rng.fill_bytes(&mut noise[..chunk.len()]);
        for (i, (value, n)) in chunk.iter_mut().zip(&noise).enumerate() {
            let channel = (chunk_index * 4096 + i) % 3;
            let shift = f32::from(n % 7) - 3.0;
            *value = (background_rgb[channel] + shift).clamp(0.0, 255.0) as u8;
        }
    }
    // The shape, antialiased by its coverage of each pixel (one-pixel ramp).
    let low = |c: f32| (c - margin).floor().max(0.0) as u32;
    let high = |c: f32| ((c + margin).ceil() as u32).min(size);
    for y in low(cy)..high(cy) {
        for x in low(cx)..high(cx) {
            let d = shape.distance(x as f32 + 0.5 - cx, y as f32 + 0.5 - cy, r);
            let coverage = (0.5 - d).clamp(0.0, 1.0);
            if coverage > 0.0 {
                let at = ((y * size + x) * 3) as usize;
                for channel in 0..3 {
                    let value = &mut pixels[at + channel];
                    let mixed =
                        f32::from(*value) * (1.0 - coverage) + shape_rgb[channel] * coverage;
                    *value = mixed.round() as u8;
                }
            }
        }
    }
    let image = RgbImage::from_raw(size, size, pixels).expect("buffer matches the image size");

    let size_word = if radius_fraction < 0.23 {
        Some("small")
    } else if radius_fraction > 0.31 {
        Some("large")
    } else {
        None
    };
    let third = |c: f32| ((c / side) * 3.0).floor().clamp(0.0, 2.0) as usize;
    let place = [
        ["in the top left", "at the top", "in the top right"],
        ["on the left", "in the middle", "on the right"],
        ["in the bottom left", "at the bottom", "in the bottom right"],
    ][third(cy)][third(cx)];
    let scene = Scene {
        colour,
        shape,
        background,
        size_word,
        place,
    };
    (image, scene)
}

/// A caption for the scene, in one of several wordings.
fn caption(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let colour = COLOURS[scene.colour].0;
    let shape = scene.shape.name();
    let background = BACKGROUNDS[scene.background].0;
    let place = scene.place;
    let sized = match scene.size_word {
        Some(word) => format!("{word} "),
        None => String::new(),
    };
    match rng.random_range(0..8) {
        0 => format!("a {colour} {shape}"),
        1 => format!("a {sized}{colour} {shape}"),
        2 => format!("a photo of a {sized}{colour} {shape} on a {background} background"),
        3 => format!("a {colour} {shape} on a {background} background"),
        4 => format!("a picture of a {colour} {shape} {place}"),
        5 => format!("a {sized}{shape} coloured {colour}"),
        6 => format!("{colour} {shape} {place}, {background} background"),
        _ => format!("a drawing of a {sized}{colour} {shape}"),
    }
}

/// The random generator of image `index` of a set (`stream`).
fn image_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng.set_word_pos(u128::from(index) << 32);
    rng
}

fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Sub)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .context("encoding a PNG")?;
    Ok(png)
}

/// Writes the training shards, `sizes.json`, the held-out ImageFolder and
/// `zeroshot.json` under `dir` (created if needed; files of the same names
/// are replaced).
pub fn write_scene_dataset(dir: &Path, spec: &SceneDatasetSpec) -> Result<SceneDataset> {
    ensure!(
        spec.train_samples >= 1,
        "the number of training samples must be at least 1"
    );
    ensure!(
        spec.samples_per_shard >= 1,
        "the samples per shard must be at least 1"
    );
    ensure!(
        (16..=1024).contains(&spec.image_size),
        "the image size must be from 16 to 1024 pixels, got {}",
        spec.image_size
    );
    let shard_dir = dir.join("shards");
    std::fs::create_dir_all(&shard_dir)
        .with_context(|| format!("cannot create {}", shard_dir.display()))?;

    let num_shards = spec.train_samples.div_ceil(spec.samples_per_shard);
    let mut sizes = serde_json::Map::new();
    for shard in 0..num_shards {
        let name = format!("scenes-{shard:05}.tar");
        let path = shard_dir.join(&name);
        let first = shard * spec.samples_per_shard;
        let last = (first + spec.samples_per_shard).min(spec.train_samples);
        write_shard(&path, spec, first..last)
            .with_context(|| format!("writing {}", path.display()))?;
        sizes.insert(name, json!(last - first));
    }
    let sizes_path = shard_dir.join("sizes.json");
    write_json(&sizes_path, &serde_json::Value::Object(sizes))?;

    let zeroshot_dir = dir.join("zeroshot");
    let class_names = write_zeroshot(&zeroshot_dir, spec)?;
    let templates: Vec<String> = TEMPLATES.iter().map(|t| t.to_string()).collect();
    write_json(
        &dir.join("zeroshot.json"),
        &json!({ "class_names": class_names, "templates": templates }),
    )?;

    Ok(SceneDataset {
        train_shards: format!(
            "{}/scenes-{{00000..{:05}}}.tar",
            shard_dir.display(),
            num_shards - 1
        ),
        num_train_samples: spec.train_samples as u64,
        zeroshot_dir,
        class_names,
        templates,
    })
}

fn write_shard(
    path: &Path,
    spec: &SceneDatasetSpec,
    samples: std::ops::Range<usize>,
) -> Result<()> {
    let file = File::create(path)?;
    let mut tar = TarWriter::new(BufWriter::new(file));
    for index in samples {
        let mut rng = image_rng(spec.seed, TRAIN_STREAM, index as u64);
        let (image, scene) = render_scene(spec.image_size, &mut rng, None);
        let key = format!("{index:06}");
        tar.append(&format!("{key}.png"), &encode_png(&image)?)?;
        tar.append(&format!("{key}.txt"), caption(&scene, &mut rng).as_bytes())?;
    }
    tar.finish()?;
    Ok(())
}

/// Writes `per_class` images of every colour-and-shape class; returns the
/// class names in ImageFolder's label order (folder names sorted).
fn write_zeroshot(root: &Path, spec: &SceneDatasetSpec) -> Result<Vec<String>> {
    let mut classes: Vec<(String, usize, Shape)> = Vec::new();
    for (colour, (colour_name, _)) in COLOURS.iter().enumerate() {
        for shape in SHAPES {
            classes.push((format!("{colour_name} {}", shape.name()), colour, shape));
        }
    }
    classes.sort_by_key(|(name, _, _)| name.replace(' ', "_"));
    let mut index = 0u64;
    for (name, colour, shape) in &classes {
        let folder = root.join(name.replace(' ', "_"));
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        for n in 0..spec.zeroshot_per_class {
            let mut rng = image_rng(spec.seed, ZEROSHOT_STREAM, index);
            index += 1;
            let (image, _) = render_scene(spec.image_size, &mut rng, Some((*colour, *shape)));
            let path = folder.join(format!("{n:03}.png"));
            std::fs::write(&path, encode_png(&image)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(classes.into_iter().map(|(name, _, _)| name).collect())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_about_their_expected_area() {
        // Pixels inside each shape of radius 25, against its area formula.
        let r = 25.0_f32;
        let area = |shape: Shape| {
            let mut inside = 0;
            for y in -40..40 {
                for x in -40..40 {
                    if shape.distance(x as f32 + 0.5, y as f32 + 0.5, r) < 0.0 {
                        inside += 1;
                    }
                }
            }
            inside as f32
        };
        let expected = [
            (Shape::Circle, std::f32::consts::PI * r * r),
            (Shape::Square, (1.7 * r) * (1.7 * r)),
            (Shape::Triangle, 3.0_f32.sqrt() * 3.0 / 4.0 * r * r),
            (
                Shape::Cross,
                2.0 * (2.0 * r) * (0.64 * r) - (0.64 * r) * (0.64 * r),
            ),
        ];
        for (shape, formula) in expected {
            let measured = area(shape);
            assert!(
                (measured - formula).abs() / formula < 0.03,
                "{shape:?}: {measured} pixels, formula {formula}"
            );
        }
    }

    #[test]
    fn captions_name_the_colour_and_shape() {
        for index in 0..200 {
            let mut rng = image_rng(7, TRAIN_STREAM, index);
            let (_, scene) = render_scene(32, &mut rng, None);
            let text = caption(&scene, &mut rng);
            assert!(text.contains(COLOURS[scene.colour].0), "{text}");
            assert!(text.contains(scene.shape.name()), "{text}");
        }
    }
}
