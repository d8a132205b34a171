//! A join token as `shoal-agent join --token` reads it: parsed, and a token that parses
//! prints back to a string that parses to the same token.
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_fuzz::fuzz_target;
use shoal_proto::JoinToken;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(token) = text.parse::<JoinToken>() {
        let printed = token.to_string();
        assert_eq!(printed.parse::<JoinToken>().as_ref(), Ok(&token), "a token did not survive printing");
        assert!(token.secret_matches(&token));
    }
});
