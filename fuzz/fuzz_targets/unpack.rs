//! The layer unpacker on arbitrary tar streams: it must never panic and never write outside the
//! folder it is given (checked with a sentinel folder beside it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = tempfile::Builder::new().prefix("msb-fuzz-").tempdir_in("/dev/shm").expect("tempdir");
    let dest = base.path().join("a/b/layer");
    let outside = base.path().join("a/outside");
    std::fs::create_dir_all(&dest).expect("dest");
    std::fs::create_dir_all(&outside).expect("outside");
    let _ = msb::store::unpack::unpack(data, &dest);
    let escaped: Vec<_> = walkdir(base.path())
        .into_iter()
        .filter(|p| !p.starts_with(&dest) && p != &outside && !dest.starts_with(p))
        .collect();
    assert!(escaped.is_empty(), "written outside the layer: {escaped:?}");
    assert!(std::fs::read_dir(&outside).expect("outside").next().is_none(), "written into the sentinel");
});

fn walkdir(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}
