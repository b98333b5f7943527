//! Tidy: project-wide rules that no compiler checks (rust-analyzer's and TigerBeetle's
//! tidy tests): no `dbg!`, no `todo!`, `unsafe` only in the one module that wraps mmap,
//! no line over 100 columns.

use std::path::{Path, PathBuf};

const UNSAFE_ALLOWED: &str = "broker/src/storage/mmap.rs";
const COLUMNS_MAX: usize = 100;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "fixtures" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn source_follows_the_tidy_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "broker", "protocol", "client", "tools", "src", "tests", "benches", "examples",
    ] {
        if root.join(dir).exists() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(files.len() > 10, "found the sources");
    let mut problems = Vec::new();
    // Built from pieces so that this file does not trip its own checks.
    let dbg = format!("{}!(", "dbg");
    let todo = format!("{}!(", "todo");
    let unsafe_block = format!("{} {{", "unsafe");
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let at = format!("{rel}:{}", i + 1);
            if line.chars().count() > COLUMNS_MAX {
                problems.push(format!("{at}: longer than {COLUMNS_MAX} columns"));
            }
            if line.contains(&dbg) {
                problems.push(format!("{at}: dbg!"));
            }
            if line.contains(&todo) {
                problems.push(format!("{at}: todo!"));
            }
            if line.contains(&unsafe_block) && rel != UNSAFE_ALLOWED {
                problems.push(format!("{at}: unsafe outside {UNSAFE_ALLOWED}"));
            }
        }
    }
    assert!(problems.is_empty(), "tidy:\n{}", problems.join("\n"));
}
