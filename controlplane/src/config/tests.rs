//! Parse tests of `dso.yaml`: good files, then a table of bad files with the position and the
//! message each must produce.

use std::path::Path;
use std::time::Duration;

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "VAULT_TOKEN" => Some("hvs.sentinel-token-4b1d".into()),
        "HOOK_TOKEN" => Some("0123456789abcdef0123".into()),
        "REGION" => Some("eu-west-1".into()),
        "SHORT_TOKEN" => Some("sntnl-short".into()),
        _ => None,
    }
}

fn parse_ok(source: &str) -> Config {
    match parse(source, Path::new("dso.yaml"), &env) {
        Ok(config) => config,
        Err(err) => panic!("expected a valid config, got: {err}"),
    }
}

fn problems(source: &str) -> Vec<Problem> {
    match parse(source, Path::new("dso.yaml"), &env) {
        Ok(_) => panic!("expected problems for:\n{source}"),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn smallest_file_gets_every_default() {
    let config = parse_ok("version: 1\n");
    assert_eq!(config.mode, Mode::Local);
    assert!(matches!(
        config.providers.get("local"),
        Some(ProviderSettings::Local { history: 10 })
    ));
    assert_eq!(config.agent.watch_interval, Duration::from_secs(300));
    assert_eq!(config.agent.api_address.to_string(), "127.0.0.1:8471");
    assert_eq!(config.agent.socket, Path::new("/run/dso/dso.sock"));
    assert!(!config.agent.webhook_enabled);
    assert_eq!(config.defaults.inject, Inject::Env);
    assert_eq!(config.defaults.strategy, Strategy::Rolling);
    assert_eq!(config.defaults.signal, "SIGHUP");
    assert_eq!(config.defaults.health_timeout, Duration::from_secs(60));
    assert_eq!(config.defaults.drain_timeout, Duration::from_secs(30));
    assert!(config.secrets.is_empty());
}

#[test]
fn starter_and_example_files_are_valid() {
    parse_ok(STARTER_LOCAL);
    let example = include_str!("../../../examples/dso.yaml");
    let config = parse(
        example,
        Path::new("examples/dso.yaml"),
        &|name| match name {
            "VAULT_TOKEN" | "AZURE_CLIENT_SECRET" => Some("x".into()),
            "DSO_WEBHOOK_TOKEN" => Some("0123456789abcdef".into()),
            _ => None,
        },
    );
    if let Err(err) = config {
        panic!("examples/dso.yaml: {err}");
    }
}

#[test]
fn full_file_resolves_with_expansion_and_overrides() {
    let config = parse_ok(
        "\
version: 1
mode: agent
providers:
  vault-prod:
    type: vault
    address: https://vault.example.com:8200
    token: ${VAULT_TOKEN}
    kv_version: 1
  aws:
    type: aws
    region: ${REGION}
agent:
  watch_interval: 1m 30s
  api_address: '[::1]:9000'
  webhook:
    enabled: true
    token: ${HOOK_TOKEN}
defaults:
  strategy: restart
  signal: usr1
secrets:
  - name: myapp/db
    provider: vault-prod
    mappings:
      DB_PASSWORD: password
    targets:
      services: [db, api]
      labels: {tier: backend}
    inject: file
    rotation:
      strategy: signal
      signal: HUP
      drain_timeout: 2m
  - name: myapp/key
    provider: aws
    inject: file
    mappings:
      tls.key: key
",
    );
    assert_eq!(config.mode, Mode::Agent);
    match &config.providers["vault-prod"] {
        ProviderSettings::Vault {
            token: Some(token),
            kv_version: 1,
            mount,
            ..
        } => {
            assert_eq!(token.expose(), b"hvs.sentinel-token-4b1d");
            assert_eq!(mount, "secret");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(&config.providers["aws"],
            ProviderSettings::Aws { region: Some(r), .. } if r == "eu-west-1"));
    assert_eq!(config.agent.watch_interval, Duration::from_secs(90));
    assert_eq!(config.agent.api_address.to_string(), "[::1]:9000");
    assert_eq!(config.defaults.signal, "SIGUSR1");

    let db = &config.secrets[0];
    assert_eq!(db.strategy, Strategy::Signal);
    assert_eq!(db.signal, "SIGHUP");
    assert_eq!(db.drain_timeout, Duration::from_secs(120));
    assert_eq!(db.health_timeout, Duration::from_secs(60));
    assert_eq!(db.services, vec!["db", "api"]);
    let key = &config.secrets[1];
    assert_eq!(key.inject, Inject::File);
    assert_eq!(key.strategy, Strategy::Restart);
}

#[test]
fn single_provider_is_implied_for_secrets() {
    let config = parse_ok("version: 1\nsecrets:\n  - name: a/b\n");
    assert_eq!(config.secrets[0].provider, "local");
}

#[test]
fn problems_never_quote_a_credential_from_another_key() {
    let vault = "version: 1\nproviders:\n  v:\n    type: vault\n    address: \
                 http://${VAULT_TOKEN}.example.com\n    token: ${VAULT_TOKEN}\n";
    let azure = "version: 1\nproviders:\n  a:\n    type: azure\n    vault_url: \
                 http://${VAULT_TOKEN}\n    tenant_id: t\n    client_id: c\n    \
                 client_secret: ${VAULT_TOKEN}\n";
    for source in [vault, azure] {
        let found = problems(source);
        assert!(!found.is_empty(), "{source}");
        for problem in &found {
            let text = problem.to_string();
            assert!(!text.contains("sentinel"), "{text}");
        }
        assert!(
            found.iter().any(|p| p.to_string().contains("[REDACTED]")),
            "{found:?}"
        );
    }
}

#[test]
fn redacted_view_never_contains_credentials() {
    let config = parse_ok(
        "version: 1\nproviders:\n  v:\n    type: vault\n    address: https://v.example\n    \
         token: ${VAULT_TOKEN}\nagent:\n  webhook:\n    enabled: true\n    token: ${HOOK_TOKEN}\n",
    );
    let shown = config.redacted_view().to_string();
    assert!(!shown.contains("sentinel"), "{shown}");
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    assert!(shown.contains(REDACTED));
    let debug = format!("{config:?}");
    assert!(!debug.contains("sentinel"), "{debug}");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let found = problems(
        "version: 1\nagent:\n  watch_interval: soon\n  socket: relative.sock\nsecrets:\n  \
         - name: a\n    provider: nope\n",
    );
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "agent.watch_interval",
            "agent.socket",
            "secrets[0].provider"
        ]
    );
}

#[test]
fn problems_never_echo_an_expanded_credential() {
    // A too-short webhook token from the environment: the message gives its length only.
    let found =
        problems("version: 1\nagent:\n  webhook:\n    enabled: true\n    token: ${SHORT_TOKEN}\n");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key, "agent.webhook.token");
    assert!(
        found[0].message.contains("11 bytes long"),
        "{}",
        found[0].message
    );
    assert!(!found[0].message.contains("sntnl"), "{}", found[0].message);
}

/// One bad file: its text, the expected position, and words the message must contain.
struct BadFile {
    name: &'static str,
    source: &'static str,
    line: usize,
    column: usize,
    key: &'static str,
    message: &'static [&'static str],
}

#[test]
fn bad_files_report_position_and_expectation() {
    let table = [
        BadFile {
            name: "unknown top-level key",
            source: "version: 1\nmoed: local\n",
            line: 2,
            column: 1,
            key: "",
            message: &["unknown field `moed`", "expected one of", "`mode`"],
        },
        BadFile {
            name: "unknown key in a secret",
            source: "version: 1\nsecrets:\n  - name: a\n    rotaton: {}\n",
            line: 4,
            column: 5,
            key: "secrets[0]",
            message: &["unknown field `rotaton`", "`rotation`"],
        },
        BadFile {
            name: "missing version",
            source: "mode: local\n",
            line: 1,
            column: 1,
            key: "",
            message: &["missing field `version`"],
        },
        BadFile {
            name: "wrong version",
            source: "version: 2\n",
            line: 1,
            column: 10,
            key: "version",
            message: &["unsupported version 2", "expected 1"],
        },
        BadFile {
            name: "version as a string",
            source: "version: \"one\"\n",
            line: 1,
            column: 10,
            key: "version",
            message: &["invalid type: string \"one\"", "expected u32"],
        },
        BadFile {
            name: "unknown mode",
            source: "version: 1\nmode: cloud\n",
            line: 2,
            column: 7,
            key: "mode",
            message: &["unknown variant `cloud`", "expected `local` or `agent`"],
        },
        BadFile {
            name: "unknown provider type",
            source: "version: 1\nproviders:\n  p:\n    type: gcp\n",
            line: 4,
            column: 11,
            key: "providers.p.type",
            message: &["unknown variant `gcp`", "`local`, `vault`, `aws`, `azure`"],
        },
        BadFile {
            name: "setting of another provider type",
            source: "version: 1\nproviders:\n  p:\n    type: vault\n    address: https://v\n    \
                     region: eu\n",
            line: 6,
            column: 13,
            key: "providers.p.region",
            message: &["not a setting of a `vault` provider", "address, token"],
        },
        BadFile {
            name: "vault without address",
            source: "version: 1\nproviders:\n  p:\n    type: vault\n",
            line: 4,
            column: 5,
            key: "providers.p",
            message: &["needs `address`"],
        },
        BadFile {
            name: "plain http to a remote vault",
            source: "version: 1\nproviders:\n  p:\n    type: vault\n    \
                     address: http://vault.corp\n",
            line: 5,
            column: 14,
            key: "providers.p.address",
            message: &["must use https"],
        },
        BadFile {
            name: "KV version 3",
            source: "version: 1\nproviders:\n  p:\n    type: vault\n    address: https://v\n    \
                     kv_version: 3\n",
            line: 6,
            column: 17,
            key: "providers.p.kv_version",
            message: &["expected 1 or 2"],
        },
        BadFile {
            name: "two local providers",
            source: "version: 1\nproviders:\n  a:\n    type: local\n  b:\n    type: local\n",
            line: 6,
            column: 11,
            key: "providers.b.type",
            message: &["only one provider may have type `local`"],
        },
        BadFile {
            name: "upper-case provider name",
            source: "version: 1\nproviders:\n  Prod:\n    type: aws\n",
            line: 4,
            column: 5,
            key: "providers.Prod",
            message: &["not a valid provider name"],
        },
        BadFile {
            name: "invalid duration",
            source: "version: 1\ndefaults:\n  health_timeout: 10 parsecs\n",
            line: 3,
            column: 19,
            key: "defaults.health_timeout",
            message: &["`10 parsecs` is not a duration", "expected e.g. `30s`"],
        },
        BadFile {
            name: "watch interval too short",
            source: "version: 1\nagent:\n  watch_interval: 1s\n",
            line: 3,
            column: 19,
            key: "agent.watch_interval",
            message: &["at least 5s"],
        },
        BadFile {
            name: "api address without port",
            source: "version: 1\nagent:\n  api_address: 127.0.0.1\n",
            line: 3,
            column: 16,
            key: "agent.api_address",
            message: &["not an IP address with a port"],
        },
        BadFile {
            name: "webhook enabled without token",
            source: "version: 1\nagent:\n  webhook:\n    enabled: true\n",
            line: 4,
            column: 14,
            key: "agent.webhook.enabled",
            message: &["has no `token`"],
        },
        BadFile {
            name: "unset variable",
            source: "version: 1\nproviders:\n  p:\n    type: vault\n    address: https://v\n    \
                     token: ${NO_SUCH_TOKEN}\n",
            line: 6,
            column: 12,
            key: "providers.p.token",
            message: &["`NO_SUCH_TOKEN` is not set"],
        },
        BadFile {
            name: "lone dollar",
            source: "version: 1\nagent:\n  socket: /run/$dso.sock\n",
            line: 3,
            column: 11,
            key: "agent.socket",
            message: &["write `$$` for a literal `$`"],
        },
        BadFile {
            name: "secret refers to an undefined provider",
            source: "version: 1\nproviders:\n  a:\n    type: local\nsecrets:\n  - name: x\n    \
                     provider: b\n",
            line: 7,
            column: 15,
            key: "secrets[0].provider",
            message: &["provider `b` is not defined", "defined: a"],
        },
        BadFile {
            name: "secret without provider among several",
            source: "version: 1\nproviders:\n  a:\n    type: local\n  b:\n    type: aws\n\
                     secrets:\n  \
                     - name: x\n",
            line: 8,
            column: 5,
            key: "secrets[0]",
            message: &["needs `provider`", "2 providers (a, b)"],
        },
        BadFile {
            name: "secret path breaks a rule",
            source: "version: 1\nsecrets:\n  - name: ../etc\n",
            line: 3,
            column: 11,
            key: "secrets[0].name",
            message: &["not a valid secret path", "`.` and `..` are not allowed"],
        },
        BadFile {
            name: "secret listed twice",
            source: "version: 1\nsecrets:\n  - name: a\n  - name: a\n",
            line: 4,
            column: 11,
            key: "secrets[1].name",
            message: &["listed twice"],
        },
        BadFile {
            name: "env mapping to an invalid variable name",
            source: "version: 1\nsecrets:\n  - name: a\n    mappings:\n      DB-PASS: password\n",
            line: 5,
            column: 16,
            key: "secrets[0].mappings.DB-PASS",
            message: &["not an environment variable name"],
        },
        BadFile {
            name: "unknown strategy",
            source: "version: 1\ndefaults:\n  strategy: bluegreen\n",
            line: 3,
            column: 13,
            key: "defaults.strategy",
            message: &[
                "unknown variant `bluegreen`",
                "`rolling`, `restart`, `signal`, `none`",
            ],
        },
        BadFile {
            name: "signal strategy for an env secret",
            source: "version: 1\nsecrets:\n  - name: a\n    rotation:\n      strategy: signal\n",
            line: 5,
            column: 17,
            key: "secrets[0].rotation.strategy",
            message: &["cannot change an environment value", "inject: file"],
        },
        BadFile {
            name: "signal without the signal strategy",
            source: "version: 1\nsecrets:\n  - name: a\n    rotation:\n      signal: HUP\n",
            line: 5,
            column: 15,
            key: "secrets[0].rotation.signal",
            message: &["only used by strategy `signal`"],
        },
        BadFile {
            name: "unsupported signal",
            source: "version: 1\ndefaults:\n  signal: SIGKILL\n",
            line: 3,
            column: 11,
            key: "defaults.signal",
            message: &["not a supported signal", "SIGHUP"],
        },
        BadFile {
            name: "list where a mapping belongs",
            source: "version: 1\nagent: [a, b]\n",
            line: 2,
            column: 8,
            key: "agent",
            message: &["invalid type: sequence", "expected struct RawAgent"],
        },
        BadFile {
            name: "YAML syntax error",
            source: "version: 1\nsecrets:\n  - name: a\n   provider: b\n",
            line: 4,
            column: 4,
            key: "",
            message: &["did not find expected '-' indicator"],
        },
        BadFile {
            name: "empty file",
            source: "\n\n",
            line: 1,
            column: 1,
            key: "",
            message: &["the file is empty"],
        },
    ];

    for case in &table {
        let found = problems(case.source);
        let first = &found[0];
        assert_eq!(
            (first.line, first.column),
            (Some(case.line), Some(case.column)),
            "{}: position of {first:?}",
            case.name
        );
        assert_eq!(first.key, case.key, "{}: key of {first:?}", case.name);
        for word in case.message {
            assert!(
                first.message.contains(word),
                "{}: {word:?} not in {:?}",
                case.name,
                first.message
            );
        }
    }
}

#[test]
fn error_display_has_file_line_and_column() {
    let err = parse("version: 1\nmode: x\n", Path::new("/tmp/d/dso.yaml"), &env).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("/tmp/d/dso.yaml:2:7: mode: unknown variant `x`"),
        "{text}"
    );
}

#[test]
fn deep_flow_nesting_is_refused_with_its_position() {
    // 100 000 levels took the YAML parser minutes; the pre-check answers at once.
    let deep = format!(
        "version: 1\nagent: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let found = problems(&deep);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].line, found[0].column),
        (Some(2), Some(8 + MAX_FLOW_DEPTH))
    );
    assert!(
        found[0].message.contains("nest deeper than 64"),
        "{}",
        found[0].message
    );

    // Ordinary flow collections pass.
    parse_ok("version: 1\nsecrets: [{name: a, targets: {services: [web, api]}}]\n");
}

#[test]
fn config_show_hides_credentials_copied_into_other_keys() {
    let source = "\
version: 1
providers:
  hv:
    type: vault
    address: https://vault.example
    token: ${VAULT_TOKEN}
    namespace: ns-${VAULT_TOKEN}
secrets:
  - name: app/db
    provider: hv
    mappings:
      DB: \"${VAULT_TOKEN}\"
    targets:
      labels:
        ${VAULT_TOKEN}: x
";
    let view = parse_ok(source).redacted_view().to_string();
    assert!(!view.contains("sentinel-token-4b1d"), "{view}");
    assert!(view.contains("ns-<redacted>"), "{view}");
}

#[test]
fn non_utf8_file_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dso.yaml");
    std::fs::write(&path, b"version: 1\nmode: lo\xffcal\n").unwrap();
    match load(&path) {
        Err(ConfigError::Invalid { problems, .. }) => {
            assert_eq!((problems[0].line, problems[0].column), (Some(2), Some(9)));
            assert!(
                problems[0].message.contains("UTF-8"),
                "{}",
                problems[0].message
            );
        }
        other => panic!("expected an invalid-file error, got {other:?}"),
    }
}

#[test]
fn endless_or_oversized_file_is_refused_without_reading_it_all() {
    let err = load(Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
}

#[test]
fn one_problem_is_counted_in_the_singular() {
    let err = parse("version: 2\n", Path::new("dso.yaml"), &env).unwrap_err();
    assert!(!err.to_string().contains("more problem"), "{err}");
    let err = parse(
        "version: 2\nmode: local\nagent: {watch_interval: x}\n",
        Path::new("d"),
        &env,
    )
    .unwrap_err();
    assert!(err.to_string().ends_with("(and 1 more problem)"), "{err}");
}

#[test]
fn raw_debug_hides_literal_credentials() {
    let raw: raw::RawConfig = yaml_serde::from_str(
        "version: 1\nproviders:\n  v:\n    type: vault\n    token: literal-sentinel-1\n  a:\n    \
         type: azure\n    client_secret: literal-sentinel-2\nagent:\n  webhook:\n    token: \
         literal-sentinel-3\n",
    )
    .expect("parses");
    let shown = format!("{raw:?}");
    assert!(!shown.contains("literal-sentinel"), "{shown}");
    assert!(shown.contains("[REDACTED]"), "{shown}");
}
