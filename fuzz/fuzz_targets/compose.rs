//! Compose files as `shoal stack deploy` reads them: the bytes parsed as YAML,
//! interpolated from a fixed environment, merged over a small base file and planned for a
//! stack. Errors are fine; a panic is not.
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_fuzz::fuzz_target;
use shoal_manager::cli::stack::compose;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |k: &str| (k == "TAG").then(|| "1.0".to_owned());
    let read = |p: &str| if p == "app.env" { Ok("A=1\n# c\nB=2\n".to_owned()) } else { Err("no file".to_owned()) };
    let Ok(mut doc) = compose::parse("fuzz.yml", text) else { return };
    if compose::interpolate_all(&mut doc, &env, "").is_err() {
        return;
    }
    if let Ok(plan) = compose::Reader::new("fuzz.yml", "lab", &read).plan(&doc) {
        for spec in plan.services.values() {
            assert!(spec.validate().is_ok(), "a planned spec is valid: {spec:?}");
        }
    }
    let mut base = compose::parse("base.yml", "services:\n  web:\n    image: demo/app:${TAG}\n").expect("base parses");
    compose::merge(&mut base, doc);
    let _ = compose::Reader::new("base.yml+fuzz.yml", "lab", &read).plan(&base);
    let _ = compose::split_words(text);
    let _ = compose::interpolate(text, &env);
    for path in ["services.web.ports[1]", "services.web.secrets[0].mode", "a[3].b", "x.[0]."] {
        let _ = compose::locate(text, path);
    }
});
