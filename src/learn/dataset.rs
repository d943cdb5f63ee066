//! Class-per-folder image datasets, the layout `image_dataset_from_directory` and most training
//! tools expect: `ROOT/<class>/<image>`. Classes are the sub-folder names in sorted order, so the
//! class index of a folder never depends on the file system's listing order.

use std::path::{Path, PathBuf};

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp"];

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dataset folder {0} has no class sub-folders containing images (expected ROOT/<class>/<image>)")]
    NoClasses(PathBuf),
    #[error("dataset folder {path} has only one class ({class}); a classifier needs at least two")]
    SingleClass { path: PathBuf, class: String },
}

/// One image of a dataset and the index of its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetItem {
    pub path: PathBuf,
    pub label: usize,
}

/// The result of scanning a class-per-folder tree.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub items: Vec<DatasetItem>,
}

impl ImageDataset {
    /// Labels of all items, in item order.
    pub fn labels(&self) -> Vec<usize> {
        self.items.iter().map(|item| item.label).collect()
    }

    /// Number of images per class, in class order.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for item in &self.items {
            counts[item.label] += 1;
        }
        counts
    }
}

/// True when `path` has one of the [`IMAGE_EXTENSIONS`].
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io_err = |source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        paths.push(entry.map_err(io_err)?.path());
    }
    paths.sort();
    Ok(paths)
}

/// Scans `root` for `root/<class>/<image>` files. Sub-folders without images are ignored (as are
/// hidden folders), files directly in `root` are ignored, and at least two classes must remain.
pub fn scan_class_folders(root: &Path) -> Result<ImageDataset, DatasetError> {
    let mut classes = Vec::new();
    let mut items = Vec::new();
    for class_dir in sorted_entries(root)? {
        let Some(name) = class_dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || !class_dir.is_dir() {
            continue;
        }
        let images: Vec<PathBuf> = sorted_entries(&class_dir)?
            .into_iter()
            .filter(|p| p.is_file() && is_image_path(p))
            .collect();
        if images.is_empty() {
            continue;
        }
        let label = classes.len();
        classes.push(name.to_string());
        items.extend(images.into_iter().map(|path| DatasetItem { path, label }));
    }
    match classes.len() {
        0 => Err(DatasetError::NoClasses(root.to_path_buf())),
        1 => Err(DatasetError::SingleClass {
            path: root.to_path_buf(),
            class: classes.remove(0),
        }),
        _ => Ok(ImageDataset {
            root: root.to_path_buf(),
            classes,
            items,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn classes_are_sorted_and_non_images_ignored() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("zebra/b.PNG"));
        touch(&dir.path().join("zebra/a.jpg"));
        touch(&dir.path().join("apple/x.jpeg"));
        touch(&dir.path().join("apple/notes.txt"));
        touch(&dir.path().join("empty/readme.md"));
        touch(&dir.path().join(".hidden/y.jpg"));
        touch(&dir.path().join("loose.jpg"));
        let ds = scan_class_folders(dir.path()).unwrap();
        assert_eq!(ds.classes, vec!["apple", "zebra"]);
        let names: Vec<_> = ds
            .items
            .iter()
            .map(|i| i.path.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["x.jpeg", "a.jpg", "b.PNG"]);
        assert_eq!(ds.labels(), vec![0, 1, 1]);
        assert_eq!(ds.counts(), vec![1, 2]);
    }

    #[test]
    fn one_class_or_none_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            scan_class_folders(dir.path()),
            Err(DatasetError::NoClasses(_))
        ));
        touch(&dir.path().join("only/a.jpg"));
        let err = scan_class_folders(dir.path()).unwrap_err();
        assert!(err.to_string().contains("only one class (only)"), "{err}");
        assert!(matches!(
            scan_class_folders(&dir.path().join("missing")),
            Err(DatasetError::Io { .. })
        ));
    }
}
