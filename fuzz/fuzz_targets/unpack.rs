//! A layer (tar, tar+gzip or tar+zstd, told apart by its magic bytes) unpacked into an
//! empty scratch directory: it may be refused, but nothing may appear, vanish or change
//! outside that directory.
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_agent::images::unpack::unpack_layer;
use shoal_fuzz::fuzz_target;
use shoal_fuzz::Scratch;

fuzz_target!(|data: &[u8]| {
    let scratch = Scratch::new();
    let _ = unpack_layer(data, "application/vnd.oci.image.layer.v1.tar", &scratch.dir);
    scratch.check_outside();
});
