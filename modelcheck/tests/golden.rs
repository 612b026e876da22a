//! Golden protocol scripts (`tests/golden/*.txt`, format in `src/golden.rs`). Each file's
//! `> ` lines are the expected output; the test fails when the runner prints anything else.
//! `UPDATE_GOLDEN=1 cargo test -p txn-modelcheck --test golden` rewrites them.

#[test]
fn golden_scripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/golden")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "expected the golden scripts in {}",
        dir.display()
    );
    let mut failed = Vec::new();
    for f in files {
        let script = std::fs::read_to_string(&f).expect("script");
        let got =
            txn_modelcheck::golden::run(&script).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if update {
            std::fs::write(&f, &got).expect("write golden");
        } else if got != script {
            println!("--- {} differs; got:\n{got}", f.display());
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "golden output differs (UPDATE_GOLDEN=1 to accept): {failed:?}"
    );
}
