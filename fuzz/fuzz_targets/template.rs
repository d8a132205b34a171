//! A `--format` template, parsed and run over Docker-shaped JSON like `inspect` output.
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_fuzz::fuzz_target;
use shoal_manager::cli::template::Template;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(template) = Template::parse(src) else { return };
    let _ = template.execute(&sample());
});

fn sample() -> serde_json::Value {
    serde_json::json!({
        "ID": "abc123",
        "Spec": { "Name": "web", "Args": ["httpd", "-f"], "Ratio": 0.0, "Half": 0.25, "Replicas": 3, "On": true,
                  "Labels": { "zone": "eu", "": "empty" }, "Big": 1e300, "Neg": -7 },
        "UpdateStatus": { "State": "paused", "Message": "update paused" },
        "Nothing": null,
        "List": [[], {}, null, "x", 1],
    })
}
