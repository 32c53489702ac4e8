//! The HTTP/1.1 response parser of the agent client: any bytes in, a status and a
//! body slice of the input or an error out. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, body)) = nno_cni_shim::agent::parse_response(data) {
        assert!(body.len() <= data.len());
    }
});
