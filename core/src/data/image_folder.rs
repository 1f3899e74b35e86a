//! Labelled image folders for zero-shot evaluation.
//!
//! - [`ImageFolder`]: torchvision's `ImageFolder`, which OpenCLIP reads
//!   `--imagenet-val` with: one subfolder per class, classes in sorted name
//!   order (class index = position), each class's images found recursively
//!   (symlinked folders followed), folders visited in sorted path order and
//!   files sorted within a folder, keeping the files whose lower-cased name
//!   ends in one of [`IMG_EXTENSIONS`]. A class folder without any image is an
//!   error, as in torchvision.
//! - [`list_imagenet_v2`]: the layout OpenCLIP's `ImageNetV2Dataset`
//!   (package `imagenetv2_pytorch`, matched-frequency variant) reads
//!   `--imagenet-v2` from: `DIR/ImageNetV2-matched-frequency/<class index>/*.jpeg`,
//!   the label being the folder name read as a number (not its sorted
//!   position). That package downloads and extracts the set into `DIR` when it
//!   is missing; clipflow expects it extracted already.
//!
//! Paths are compared as their bytes, which orders UTF-8 names as Python
//! orders `str`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// torchvision's `IMG_EXTENSIONS`, matched against the lower-cased file name.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// The folder under `--imagenet-v2` that holds the images.
pub const IMAGENET_V2_FOLDER: &str = "ImageNetV2-matched-frequency";

/// The extension ImageNetV2 images have (matched case-sensitively).
const IMAGENET_V2_EXTENSION: &str = ".jpeg";

/// One image file and the index of its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledImage {
    pub path: PathBuf,
    pub class_index: usize,
}

/// A folder of class subfolders, listed as torchvision's `ImageFolder` does.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// Class folder names, sorted; class `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Every image, class by class in class order.
    pub samples: Vec<LabelledImage>,
}

impl ImageFolder {
    /// Lists `root`. Fails naming `root` when it cannot be read, holds no
    /// class folder, or has class folders without images.
    pub fn open(root: &Path) -> Result<ImageFolder> {
        let classes = class_folders(root)?;
        let mut samples = Vec::new();
        let mut empty_classes = Vec::new();
        for (class_index, class) in classes.iter().enumerate() {
            let before = samples.len();
            for dir in walk_sorted(&root.join(class), true)? {
                samples.extend(
                    dir.files
                        .iter()
                        .filter(|name| has_image_extension(name))
                        .map(|name| LabelledImage {
                            path: dir.path.join(name),
                            class_index,
                        }),
                );
            }
            if samples.len() == before {
                empty_classes.push(class.as_str());
            }
        }
        if !empty_classes.is_empty() {
            bail!(
                "image folder {}: no image file in the class folders {} (image files end in {})",
                root.display(),
                empty_classes.join(", "),
                IMG_EXTENSIONS.join(", ")
            );
        }
        Ok(ImageFolder { classes, samples })
    }
}

/// Whether a file name ends in one of [`IMG_EXTENSIONS`], ignoring case.
pub fn has_image_extension(file_name: &std::ffi::OsStr) -> bool {
    let name = file_name.as_encoded_bytes().to_ascii_lowercase();
    IMG_EXTENSIONS
        .iter()
        .any(|ext| name.ends_with(ext.as_bytes()))
}

/// The ImageNetV2 images under `location` (`--imagenet-v2`), sorted by path,
/// labelled by their folder's number; every label must be below
/// `num_classes`.
pub fn list_imagenet_v2(location: &Path, num_classes: usize) -> Result<Vec<LabelledImage>> {
    let root = location.join(IMAGENET_V2_FOLDER);
    if !root.is_dir() {
        bail!(
            "--imagenet-v2 {}: no folder {IMAGENET_V2_FOLDER} in it; extract the ImageNetV2 \
             matched-frequency set there (one folder per class index holding .jpeg images)",
            location.display()
        );
    }
    let mut images = Vec::new();
    for dir in walk_sorted(&root, false)? {
        for name in &dir.files {
            if !name
                .as_encoded_bytes()
                .ends_with(IMAGENET_V2_EXTENSION.as_bytes())
            {
                continue;
            }
            let path = dir.path.join(name);
            let label = dir
                .path
                .file_name()
                .and_then(|folder| folder.to_str())
                .and_then(|folder| folder.trim().parse::<usize>().ok());
            match label {
                Some(class_index) if class_index < num_classes => {
                    images.push(LabelledImage { path, class_index })
                }
                Some(class_index) => bail!(
                    "ImageNetV2 image {}: class {class_index} is not below the {num_classes} classes",
                    path.display()
                ),
                None => bail!(
                    "ImageNetV2 image {}: its folder is not named by a class index",
                    path.display()
                ),
            }
        }
    }
    if images.is_empty() {
        bail!(
            "--imagenet-v2: no {IMAGENET_V2_EXTENSION} image under {}",
            root.display()
        );
    }
    Ok(images)
}

/// The class folder names in `root`, sorted (symlinks to folders count).
fn class_folders(root: &Path) -> Result<Vec<String>> {
    let mut classes = Vec::new();
    for entry in
        fs::read_dir(root).with_context(|| format!("reading image folder {}", root.display()))?
    {
        let entry = entry.with_context(|| format!("reading image folder {}", root.display()))?;
        if entry.path().is_dir() {
            let name = entry.file_name().into_string().map_err(|name| {
                anyhow::anyhow!(
                    "image folder {}: class folder name {name:?} is not UTF-8",
                    root.display()
                )
            })?;
            classes.push(name);
        }
    }
    if classes.is_empty() {
        bail!(
            "image folder {}: no class folder in it (it needs one subfolder of images per class)",
            root.display()
        );
    }
    classes.sort();
    Ok(classes)
}

/// A folder and the names of the non-folder entries in it, sorted.
struct FolderFiles {
    path: PathBuf,
    files: Vec<OsString>,
}

/// `top` and every folder below it, ordered by path as Python sorts
/// `os.walk`'s output (by the path string, so `a b` before `a/x`).
/// `follow_links` says whether symlinked folders are entered.
fn walk_sorted(top: &Path, follow_links: bool) -> Result<Vec<FolderFiles>> {
    let mut folders: Vec<(Vec<u8>, FolderFiles)> = Vec::new();
    let mut pending = vec![(Vec::new(), top.to_path_buf())];
    while let Some((sort_key, path)) = pending.pop() {
        let mut files = Vec::new();
        for entry in fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))? {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            let entry_path = entry.path();
            let is_link = entry.file_type().is_ok_and(|kind| kind.is_symlink());
            if entry_path.is_dir() {
                if follow_links || !is_link {
                    let mut child_key = sort_key.clone();
                    child_key.push(std::path::MAIN_SEPARATOR as u8);
                    child_key.extend_from_slice(entry.file_name().as_encoded_bytes());
                    pending.push((child_key, entry_path));
                }
            } else {
                files.push(entry.file_name());
            }
        }
        files.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        folders.push((sort_key, FolderFiles { path, files }));
    }
    folders.sort_by(|(a, _), (b, _)| a.cmp(b));
    Ok(folders.into_iter().map(|(_, folder)| folder).collect())
}
