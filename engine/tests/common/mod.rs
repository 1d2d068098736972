//! What both scenario runners share: every script of a folder, in name order, each on a fresh
//! runner.

pub fn run_scripts<R: goldenscript::Runner>(folder: &str, new: impl Fn() -> R) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts").join(folder);
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scripts in {}", dir.display());
    for path in paths {
        goldenscript::run(&mut new(), &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
