//! Case-by-case tests of the reference grammar in `docs/references.md`.

use super::*;

fn key(text: &str) -> KeyPath {
    KeyPath::parse(text).unwrap()
}

fn pick(json: &str, selector: &str) -> Result<Vec<u8>, SelectError> {
    select(&SecretValue::from_slice(json.as_bytes()), &key(selector)).map(|v| v.expose().to_vec())
}

#[test]
fn env_and_file_schemes() {
    let env = Reference::parse("dso://myapp/db_password").unwrap();
    assert_eq!(env.injection, Injection::Env);
    assert_eq!(env.provider, None);
    assert_eq!(env.path.as_str(), "myapp/db_password");
    assert_eq!(env.key, None);

    let file = Reference::parse("dsofile://myapp/tls.pem").unwrap();
    assert_eq!(file.injection, Injection::File);
    assert_eq!(file.path.as_str(), "myapp/tls.pem");
}

#[test]
fn provider_prefix() {
    let r = Reference::parse("dso://aws:prod/db#password").unwrap();
    assert_eq!(r.provider.as_deref(), Some("aws"));
    assert_eq!(r.path.as_str(), "prod/db");
    assert_eq!(r.key.unwrap().segments(), ["password"]);

    let r = Reference::parse("dsofile://my-vault_2:x").unwrap();
    assert_eq!(r.provider.as_deref(), Some("my-vault_2"));

    for bad in [
        "dso://:x",
        "dso://AWS:x",
        "dso://_a:x",
        "dso://a.b:x",
        "dso://a b:x",
    ] {
        assert!(
            matches!(
                Reference::parse(bad),
                Err(ReferenceError::BadProvider { .. })
            ),
            "{bad}"
        );
    }
    let long = format!("dso://{}:x", "a".repeat(MAX_PROVIDER_LEN + 1));
    assert!(matches!(
        Reference::parse(&long),
        Err(ReferenceError::BadProvider { .. })
    ));
    let longest = format!("dso://{}:x", "a".repeat(MAX_PROVIDER_LEN));
    assert!(Reference::parse(&longest).is_ok());
}

#[test]
fn a_second_colon_is_a_path_error() {
    assert!(matches!(
        Reference::parse("dso://aws:a:b"),
        Err(ReferenceError::BadPath {
            rule: PathRuleError::BadCharacter { found: ':' },
            ..
        })
    ));
}

#[test]
fn path_rules_are_the_vault_rules() {
    let cases: &[(&str, PathRuleError)] = &[
        ("dso://a//b", PathRuleError::EmptySegment),
        ("dso:///a", PathRuleError::EmptySegment),
        ("dso://a/", PathRuleError::EmptySegment),
        ("dso://a/../b", PathRuleError::DotSegment),
        ("dso://a b", PathRuleError::BadCharacter { found: ' ' }),
        ("dso://a$b", PathRuleError::BadCharacter { found: '$' }),
        ("dso://ä", PathRuleError::BadCharacter { found: 'ä' }),
    ];
    for (text, rule) in cases {
        match Reference::parse(text) {
            Err(ReferenceError::BadPath { rule: found, .. }) => assert_eq!(&found, rule, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn empty_parts_are_refused() {
    assert_eq!(Reference::parse("dso://"), Err(ReferenceError::EmptyPath));
    assert_eq!(
        Reference::parse("dso://aws:"),
        Err(ReferenceError::EmptyPath)
    );
    assert_eq!(Reference::parse("dso://#k"), Err(ReferenceError::EmptyPath));
    assert_eq!(Reference::parse("dso://a#"), Err(ReferenceError::EmptyKey));
}

#[test]
fn schemes_are_exact_and_case_sensitive() {
    for text in [
        "DSO://a",
        "dso:/a",
        "dso:a",
        " dso://a",
        "xdso://a",
        "dsofile:/a",
        "",
    ] {
        assert_eq!(Reference::detect(text), Ok(None), "{text:?}");
    }
    assert_eq!(Reference::parse("DSO://a"), Err(ReferenceError::NoScheme));
    assert!(Reference::detect("dso://a").unwrap().is_some());
    assert!(Reference::detect("dso://").is_err());
}

#[test]
fn keys_nested_and_escaped() {
    assert_eq!(key("password").segments(), ["password"]);
    assert_eq!(key("db.password").segments(), ["db", "password"]);
    assert_eq!(key(r"tls\.crt").segments(), ["tls.crt"]);
    assert_eq!(key(r"a\\b").segments(), [r"a\b"]);
    assert_eq!(key(r"a\\.b").segments(), [r"a\", "b"]);
    assert_eq!(key("a#b").segments(), ["a#b"]);
    assert_eq!(key("0.1").segments(), ["0", "1"]);
    assert_eq!(key("ключ.🔑").segments(), ["ключ", "🔑"]);
    assert_eq!(key("with space").segments(), ["with space"]);

    for bad in ["a..b", ".a", "a.", "."] {
        assert!(
            matches!(
                KeyPath::parse(bad),
                Err(ReferenceError::EmptyKeySegment { .. })
            ),
            "{bad}"
        );
    }
    for bad in [r"a\b", r"a\", r"\x"] {
        assert!(
            matches!(KeyPath::parse(bad), Err(ReferenceError::BadEscape { .. })),
            "{bad}"
        );
    }
    let deep = vec!["k"; MAX_KEY_SEGMENTS + 1].join(".");
    assert!(matches!(
        KeyPath::parse(&deep),
        Err(ReferenceError::KeyTooDeep { .. })
    ));
    assert!(KeyPath::parse(&vec!["k"; MAX_KEY_SEGMENTS].join(".")).is_ok());
}

#[test]
fn display_round_trips() {
    for text in [
        "dso://a",
        "dsofile://local:a/b.c#x",
        r"dso://a#tls\.crt.inner",
        r"dso://a#back\\slash",
        "dso://a#0.k#hash",
    ] {
        let parsed = Reference::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(Reference::parse(&parsed.to_string()).unwrap(), parsed);
    }
}

#[test]
fn select_strings_are_decoded() {
    assert_eq!(
        pick(r#"{"password":"s3cr$t"}"#, "password").unwrap(),
        b"s3cr$t"
    );
    assert_eq!(
        pick(r#"{"p":"a\nb\u00e9\"\\"}"#, "p").unwrap(),
        "a\nbé\"\\".as_bytes()
    );
    assert_eq!(pick(r#"{"p":""}"#, "p").unwrap(), b"");
    assert_eq!(pick(r#"{"p":"🔑"}"#, "p").unwrap(), "🔑".as_bytes());
}

#[test]
fn select_non_strings_give_their_json_text_as_written() {
    let doc = r#"{"n": 1.50, "e": 1e3, "big": 123456789012345678901234567890,
        "t": true, "f": false, "o": {"b": 1,  "a": [2]}, "arr": [1, "x"]}"#;
    assert_eq!(pick(doc, "n").unwrap(), b"1.50");
    assert_eq!(pick(doc, "e").unwrap(), b"1e3");
    assert_eq!(pick(doc, "big").unwrap(), b"123456789012345678901234567890");
    assert_eq!(pick(doc, "t").unwrap(), b"true");
    assert_eq!(pick(doc, "f").unwrap(), b"false");
    assert_eq!(pick(doc, "o").unwrap(), br#"{"b": 1,  "a": [2]}"#);
    assert_eq!(pick(doc, "arr").unwrap(), br#"[1, "x"]"#);
}

#[test]
fn select_null_is_refused() {
    assert!(matches!(
        pick(r#"{"a":null}"#, "a"),
        Err(SelectError::Null { .. })
    ));
}

#[test]
fn select_nested_objects_arrays_and_dotted_names() {
    let doc = r#"{"db": {"primary": {"password": "p1"}}, "db.primary": "flat",
        "hosts": ["h0", {"name": "h1"}], "a\\b": "back"}"#;
    assert_eq!(pick(doc, "db.primary.password").unwrap(), b"p1");
    assert_eq!(pick(doc, r"db\.primary").unwrap(), b"flat");
    assert_eq!(pick(doc, "hosts.0").unwrap(), b"h0");
    assert_eq!(pick(doc, "hosts.1.name").unwrap(), b"h1");
    assert_eq!(pick(doc, r"a\\b").unwrap(), b"back");
    assert_eq!(pick(r#"["x","y"]"#, "1").unwrap(), b"y");
}

#[test]
fn select_missing_keys_name_the_missing_part() {
    let doc = r#"{"db": {"user": "u"}, "list": [1]}"#;
    assert_eq!(
        pick(doc, "db.password").unwrap_err().to_string(),
        "the secret has no key `db.password` (selecting `#db.password`)"
    );
    assert!(matches!(
        pick(doc, "nope.x"),
        Err(SelectError::MissingKey { missing, .. }) if missing == "nope"
    ));
    for index in ["1", "01", "-0", "+0", "x", "18446744073709551616"] {
        assert!(
            matches!(
                pick(doc, &format!("list.{index}")),
                Err(SelectError::MissingKey { .. })
            ),
            "{index}"
        );
    }
}

#[test]
fn select_into_a_scalar_is_refused() {
    let err = pick(r#"{"a": "text"}"#, "a.b").unwrap_err();
    assert!(matches!(
        &err,
        SelectError::NotContainer { at, kind: "string", .. } if at == "a"
    ));
    assert!(matches!(
        pick("42", "a"),
        Err(SelectError::NotContainer { kind: "number", .. })
    ));
}

#[test]
fn select_refuses_non_json_without_showing_it() {
    for doc in ["plain-sentinel-text", "{\"a\": ", "\u{0}"] {
        let err = pick(doc, "a").unwrap_err();
        assert!(matches!(err, SelectError::NotJson { .. }), "{doc:?}");
        assert!(!err.to_string().contains("sentinel"));
    }
    let not_utf8 = SecretValue::from_slice(&[0xff, 0xfe]);
    assert!(matches!(
        select(&not_utf8, &key("a")),
        Err(SelectError::NotJson { .. })
    ));
}

#[test]
fn select_duplicate_members_last_wins() {
    assert_eq!(pick(r#"{"a":"1","a":"2"}"#, "a").unwrap(), b"2");
}

#[test]
fn errors_never_contain_the_value() {
    let doc = r#"{"a": {"b": "sentinel-91ab"}, "n": null}"#;
    for selector in ["a.b.c", "a.x", "n", "zz"] {
        if let Err(err) = pick(doc, selector) {
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("sentinel"), "{shown}");
        }
    }
}
