//! What building glimpse needs, checked so it stays true: nothing but Rust and a C compiler. No
//! bindgen or clang-sys in the build graph of either target (they need libclang at build time;
//! the V4L2 bindings are vendored, see vendor/v4l2-sys-mit), and no tracked file over 1 MB (no
//! binaries in git; a fresh clone stays small).

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Packages (`name vX.Y.Z` lines) that `cargo tree` lists for `target`, normal and build edges:
/// what `cargo build` compiles for that target.
fn build_graph(target: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(REPO)
        .args(["tree", "--locked", "--target", target])
        .args(["-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree --target {target} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("cargo tree output is UTF-8")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn no_target_needs_libclang_to_build() {
    for target in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
        let graph = build_graph(target);
        // The camera stack is in the graph (so the check below means something)...
        for needed in ["nokhwa ", "v4l ", "v4l2-sys-mit "] {
            assert!(
                graph.iter().any(|p| p.starts_with(needed)),
                "{target}: {needed}missing from the build graph: {graph:?}"
            );
        }
        // ...and its bindings come from the vendored copy, without bindgen.
        let vendored = graph
            .iter()
            .find(|p| p.starts_with("v4l2-sys-mit "))
            .expect("v4l2-sys-mit listed");
        assert!(
            vendored.contains("vendor/v4l2-sys-mit"),
            "{target}: {vendored}"
        );
        for banned in ["bindgen ", "clang-sys "] {
            let found: Vec<&String> = graph.iter().filter(|p| p.starts_with(banned)).collect();
            assert!(
                found.is_empty(),
                "{target} builds {found:?}: that needs libclang"
            );
        }
    }
}

#[test]
fn no_tracked_file_is_over_1_mb() {
    let out = Command::new("git")
        .current_dir(REPO)
        .args(["ls-files", "-z"])
        .output()
        .expect("run git ls-files (git must be installed; the tests run in a checkout)");
    assert!(
        out.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<&[u8]> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .collect();
    assert!(
        files.len() > 50,
        "git ls-files listed only {} files",
        files.len()
    );
    let mut big = Vec::new();
    for file in files {
        let path = Path::new(REPO).join(String::from_utf8_lossy(file).as_ref());
        // A tracked file deleted in the work tree is not in the next commit's tree either.
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.len() > 1_000_000 {
                big.push(format!("{} ({} bytes)", path.display(), meta.len()));
            }
        }
    }
    assert!(big.is_empty(), "tracked files over 1 MB: {big:?}");
}
