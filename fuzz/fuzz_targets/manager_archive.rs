//! An image archive as `shoal image load` uploads it to the manager: unpacked into a
//! staging area of a scratch blob store and verified; the staging is dropped, so nothing
//! is committed. Nothing may be written outside the scratch directory.
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_fuzz::fuzz_target;
use shoal_fuzz::Scratch;
use shoal_manager::images::archive::import;
use shoal_manager::images::blobs::BlobStore;

fuzz_target!(|data: &[u8]| {
    let scratch = Scratch::new();
    let file = scratch.dir.join("upload.tar");
    std::fs::write(&file, data).expect("write the upload");
    let store = BlobStore::open(&scratch.dir.join("manager")).expect("scratch blob store");
    if let Ok(imported) = import(&file, &store) {
        assert!(!imported.images.is_empty(), "an archive imported with no image");
    }
    scratch.check_outside();
});
