//! Feeds arbitrary bytes to the legacy form decoder and the JSON decoders:
//! they must return a value or an error, never panic, and a decoded form
//! must only hold known fields.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(raw) = ingest_api::wire::legacy_form(body) {
        // Every value the decoder produces is a string or a number.
        let values = [&raw.acc_nbr, &raw.grades[0], &raw.grades[1], &raw.grades[2], &raw.texts[0], &raw.texts[1], &raw.texts[2], &raw.scene];
        for value in values.into_iter().flatten() {
            assert!(value.is_string() || value.is_number(), "{value:?}");
        }
    }
    let _ = ingest_api::wire::legacy_json(body);
    let _ = ingest_api::wire::v1_json(body);
});
