//! An image archive side-loaded on a board (`shoal-agent image load FILE`): extracted,
//! its index read, and each image for this board verified and its layers unpacked into
//! a scratch image store. Nothing may be written outside the scratch directory.
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_agent::images::archive::load;
use shoal_agent::images::store::ImageStore;
use shoal_fuzz::fuzz_target;
use shoal_fuzz::Scratch;

fuzz_target!(|data: &[u8]| {
    let scratch = Scratch::new();
    let file = scratch.dir.join("image.tar");
    std::fs::write(&file, data).expect("write the archive");
    let store = std::sync::Arc::new(ImageStore::open(&scratch.dir.join("images")).expect("scratch image store"));
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let _ = runtime.block_on(load(&store, &file));
    scratch.check_outside();
});
