//! Loading and validation of the layered settings.

use super::*;
use voxrt_actors::processors::ProcessorCatalog;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The admin and client credential hashes the production profile requires.
fn credentials() -> HashMap<String, String> {
    let hash = "ab".repeat(32);
    env(&[
        ("VOXRT_ADMIN__TOKEN_SHA256", &hash),
        ("VOXRT_AUTH__API_KEYS_SHA256", &hash),
    ])
}

#[test]
fn embedded_defaults_are_valid_for_every_profile() {
    let catalog = ProcessorCatalog::with_builtins();
    for profile in [
        None,
        Some("bench"),
        Some("development"),
        Some("production"),
        Some("test"),
    ] {
        let s = Settings::load_from(profile, &credentials(), &[]).unwrap();
        s.validate(&catalog).unwrap();
    }
}

/// Every profile's memory budget holds its `max_sessions` sessions' worst case, so `/ready`
/// and admission agree on where the server is full (`server_full` before
/// `memory_budget_exceeded`).
#[test]
fn every_profile_budget_reaches_its_max_sessions() {
    let catalog = ProcessorCatalog::with_builtins();
    for profile in [None, Some("bench"), Some("development"), Some("production")] {
        let s = Settings::load_from(profile, &credentials(), &[]).unwrap();
        let reserve = s.session_worst_case_bytes(&catalog);
        assert!(
            s.registry.max_sessions <= s.registry.budget_sessions(reserve),
            "{profile:?}: {} sessions of {reserve} bytes over {} MiB",
            s.registry.max_sessions,
            s.registry.memory_budget_mb
        );
    }
}

#[test]
fn environment_overrides_keys_and_lists() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("VOXRT_SERVER__PORT", "9000"),
            ("VOXRT_PIPELINE__PROCESSORS", "vad"),
            ("VOXRT_PROFILE", "production"),
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(s.server.port, 9000);
    assert_eq!(s.pipeline.processors, vec!["vad".to_string()]);
    assert_eq!(s.server.host, "0.0.0.0");
}

#[test]
fn production_requires_an_admin_token() {
    let s = Settings::load_from(Some("production"), &env(&[]), &[]).unwrap();
    let err = s
        .validate(&ProcessorCatalog::with_builtins())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("admin.token_sha256"), "{err}");
}

#[test]
fn trusted_proxies_take_addresses_and_ranges() {
    let s = Settings::load_from(
        None,
        &env(&[("VOXRT_SERVER__TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")]),
        &[],
    )
    .unwrap();
    let shown: Vec<String> = s
        .server
        .trusted_proxies
        .iter()
        .map(|p| String::from(*p))
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "127.0.0.1/32"]);
    let err = Settings::load_from(
        None,
        &env(&[("VOXRT_SERVER__TRUSTED_PROXIES", "nope")]),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not an IP address or CIDR range"), "{err}");
}

#[test]
fn client_variables_are_not_settings() {
    let vars = env(&[
        ("VOXRT_TOKEN", "vx-client-key"),
        ("VOXRT_URL", "ws://127.0.0.1:9"),
        ("VOXRT_SERVER__PORT", "9000"),
        ("VOXRT_PROFILE", "test"),
        ("HOME", "/root"),
    ]);
    let s = Settings::load_from(None, &vars, &[]).unwrap();
    assert_eq!(s.server.port, 9000);
    let source = ConfigSource {
        env: vars,
        ..ConfigSource::default()
    };
    assert_eq!(source.ignored_variables(), ["VOXRT_TOKEN", "VOXRT_URL"]);
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let err = Settings::load_from(None, &env(&[("VOXRT_SERVER__PROT", "1")]), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("prot"), "{err}");
}

#[test]
fn out_of_range_value_names_key_value_and_range() {
    let s = Settings::load_from(None, &env(&[("VOXRT_VAD__THRESHOLD", "1.5")]), &[]).unwrap();
    let err = s
        .validate(&ProcessorCatalog::with_builtins())
        .unwrap_err()
        .to_string();
    assert_eq!(err, "vad.threshold = 1.5: must be in 0..=1");
}

#[test]
fn production_requires_client_credentials() {
    let admin = "ab".repeat(32);
    let s = Settings::load_from(
        Some("production"),
        &env(&[("VOXRT_ADMIN__TOKEN_SHA256", &admin)]),
        &[],
    )
    .unwrap();
    let err = s
        .validate(&ProcessorCatalog::with_builtins())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("auth.required = true: needs at least one credential"),
        "{err}"
    );
}

#[test]
fn auth_and_security_values_are_checked_by_key() {
    let catalog = ProcessorCatalog::with_builtins();
    let err_of = |pairs: &[(&str, &str)]| {
        Settings::load_from(None, &env(pairs), &[])
            .unwrap()
            .validate(&catalog)
            .unwrap_err()
            .to_string()
    };
    let e = err_of(&[("VOXRT_AUTH__API_KEYS_SHA256", "nothex")]);
    assert!(e.starts_with("auth.api_keys_sha256"), "{e}");
    let e = err_of(&[("VOXRT_AUTH__JWT__ALGORITHM", "HS512")]);
    assert!(e.starts_with("auth.jwt.algorithm"), "{e}");
    let e = err_of(&[
        ("VOXRT_AUTH__JWT__ALGORITHM", "HS256"),
        ("VOXRT_AUTH__JWT__HS256_SECRET", "short"),
    ]);
    assert!(e.starts_with("auth.jwt.hs256_secret"), "{e}");
    assert!(!e.contains("short"), "the secret is not echoed: {e}");
    let e = err_of(&[
        ("VOXRT_AUTH__JWT__ALGORITHM", "HS256"),
        ("VOXRT_AUTH__JWT__HS256_SECRET", &"k".repeat(32)),
    ]);
    assert!(e.starts_with("auth.jwt.audience"), "{e}");
    let e = err_of(&[(
        "VOXRT_SECURITY__ALLOWED_ORIGINS",
        "https://ok.example,https://x.example/path",
    )]);
    assert!(
        e.starts_with("security.allowed_origins = \"https://x.example/path\""),
        "{e}"
    );
}

#[test]
fn printed_settings_show_a_digest_of_the_jwt_secret_not_the_secret() {
    let secret = "a-very-long-shared-secret-of-32-bytes!";
    let s = Settings::load_from(
        None,
        &env(&[("VOXRT_AUTH__JWT__HS256_SECRET", secret)]),
        &[],
    )
    .unwrap();
    let printed = serde_json::to_string(&s).unwrap();
    assert!(!printed.contains(secret), "{printed}");
    assert!(printed.contains("\"hs256_secret\":\"sha256:"), "{printed}");
}

#[test]
fn tls_needs_both_files_and_the_error_names_the_missing_one() {
    let catalog = ProcessorCatalog::with_builtins();
    for (set, missing) in [
        ("VOXRT_SERVER__TLS__CERT_FILE", "server.tls.key_file"),
        ("VOXRT_SERVER__TLS__KEY_FILE", "server.tls.cert_file"),
    ] {
        let s = Settings::load_from(None, &env(&[(set, "/etc/voxrt/x.pem")]), &[]).unwrap();
        let err = s.validate(&catalog).unwrap_err().to_string();
        assert!(err.starts_with(missing), "{err}");
    }
}

#[test]
fn log_file_bounds_are_validated() {
    let catalog = ProcessorCatalog::with_builtins();
    for (key, value) in [
        ("VOXRT_LOG__MAX_FILE_BYTES", "100"),
        ("VOXRT_LOG__MAX_FILES", "0"),
        ("VOXRT_LOG__QUEUE_LINES", "1"),
    ] {
        let s = Settings::load_from(None, &env(&[(key, value)]), &[]).unwrap();
        let err = s.validate(&catalog).unwrap_err().to_string();
        let dotted = key["VOXRT_".len()..].to_lowercase().replace("__", ".");
        assert!(err.starts_with(&dotted), "{err}");
    }
    let same = [
        ("VOXRT_LOG__FILE", "/var/log/voxrt.log"),
        ("VOXRT_LOG__ERROR_FILE", "/var/log/voxrt.log"),
    ];
    let s = Settings::load_from(None, &env(&same), &[]).unwrap();
    let err = s.validate(&catalog).unwrap_err().to_string();
    assert!(err.starts_with("log.error_file"), "{err}");
}
