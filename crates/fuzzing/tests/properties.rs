//! The fuzz targets' checks (`kv_fuzzing`) under proptest, in `make test`: random inputs and
//! inputs shaped like the real thing (a token with bytes changed, a message of the right type
//! with bytes flipped, a request with odd keys and queries, a config with odd values).

use proptest::prelude::*;

fn flipped(bytes: Vec<u8>, flips: Vec<(usize, u8)>) -> Vec<u8> {
    let mut bytes = bytes;
    if bytes.is_empty() {
        return bytes;
    }
    for (at, with) in flips {
        let i = at % bytes.len();
        bytes[i] ^= with;
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn context_tokens(bytes in proptest::collection::vec(any::<u8>(), 0..200), text in "[A-Za-z0-9_-]{0,120}") {
        kv_fuzzing::context_token(&bytes);
        kv_fuzzing::context_token(text.as_bytes());
    }

    #[test]
    fn peer_messages(kind in 0u8..8, body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut data = vec![kind];
        data.extend(body);
        kv_fuzzing::peer_messages(&data);
    }

    #[test]
    fn real_messages_with_bytes_flipped(flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4)) {
        use kv_proto::{encode, Call, ReadRequest, ScanRequest};
        let calls = vec![Call::Read(ReadRequest::new(b"some-key".to_vec()))];
        let scan = ScanRequest { first_hash: 1, last_hash: u64::MAX, after: Some(b"k".to_vec()), limit: 10 };
        for (kind, body) in [(0u8, encode(&calls)), (2, encode(&scan))] {
            let mut data = vec![kind];
            data.extend(flipped(body, flips.clone()));
            kv_fuzzing::peer_messages(&data);
        }
    }

    #[test]
    fn gossip(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        kv_fuzzing::gossip(&body);
    }

    #[test]
    fn signatures(header in "v6 [0-9a-f]{0,8} [0-9]{0,14} [0-9a-f]{0,16}\\.[0-9]{0,5} [!-~]{0,20} (-|n[0-9]~[0-9a-f]{16}) [0-9a-f]{0,64} [0-9a-f]{0,64}", body in ".{0,50}") {
        kv_fuzzing::signature(format!("{header}\n{body}").as_bytes());
    }

    #[test]
    fn any_signature_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        kv_fuzzing::signature(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn client_requests(
        method in prop::sample::select(vec!["GET", "PUT", "DELETE", "POST", "PATCH", "HEAD"]),
        key in "[ -~]{0,40}|(%[0-9A-Fa-f]{2}){0,10}|%[^0-9]{0,3}",
        query in "((r|w|pw|x)=[a-z0-9_]{0,12}&?){0,4}",
        context in "[A-Za-z0-9_=-]{0,90}",
        content_type in "[ -~]{0,300}",
        body in ".{0,64}",
    ) {
        let target = format!("/kv/{}?{query}", key.replace([' ', '#', '?'], "_"));
        let request = format!("{method} {target}\nx-context: {context}\ncontent-type: {content_type}\n\n{body}");
        kv_fuzzing::client_request(request.as_bytes());
    }

    #[test]
    fn any_client_request(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        kv_fuzzing::client_request(&data);
    }

    #[test]
    fn configs(
        key in prop::sample::select(vec![
            "replicas", "read-quorum", "write-quorum", "weight", "max-value-bytes", "tombstone-grace", "hint-max-age",
            "gossip-interval", "suspect-after", "max-connections", "idle-timeout", "max-siblings", "warn-siblings",
            "auth-max-skew", "insecure", "engine", "sync", "zone", "node-id", "seeds", "expect-nodes", "max-headers",
            "max-clock-offset",
        ]),
        value in "-?[0-9]{1,20}|\"[ -~]{0,20}\"|true|false|\\[\\]|\\{\\}|1\\.5e9",
        rest in "[ -~\n]{0,80}",
    ) {
        kv_fuzzing::config(format!("insecure = true\n{key} = {value}\n").as_bytes());
        kv_fuzzing::config(format!("{key} = {value}\n{rest}").as_bytes());
    }

    #[test]
    fn any_config(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        kv_fuzzing::config(&data);
    }
}
