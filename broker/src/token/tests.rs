//! Claim validation, one rule at a time, with real signatures (HS256, ES256, EdDSA).

use super::*;
use jsonwebtoken::{EncodingKey, Header};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hospital";
const NODE: &str = "js.nj";

fn hs_key(kid: &str, subjects: &str, roles: &[Role]) -> TokenKey {
    TokenKey::hs256(kid, SECRET, subjects.parse().unwrap(), roles.to_vec()).unwrap()
}

fn set(keys: Vec<TokenKey>) -> KeySet {
    KeySet::new(keys).unwrap()
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &serde_json::Value,
    key: &EncodingKey,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn hs(kid: Option<&str>, claims: serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        kid,
        &claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({"sub": sub, "exp": now_s() + 600})
}

#[test]
fn a_valid_token_logs_in_as_its_subject() {
    let keys = set(vec![hs_key("k1", "pt-*", &[Role::Client])]);
    let v = keys
        .verify(hs(Some("k1"), claims("pt-1")).as_bytes(), NODE)
        .unwrap();
    assert_eq!(
        v,
        Verified {
            name: "pt-1".into(),
            role: Role::Client,
            kid: "k1".into()
        }
    );
    // Minted by the shared minter: the same claims type both ways.
    let t = mint_hs256(SECRET, "k1", &Claims::new("pt-2", 60)).unwrap();
    assert_eq!(keys.verify(t.as_bytes(), NODE).unwrap().name, "pt-2");
    // One key: the kid may be left out. Unknown claims are ignored.
    let mut c = claims("pt-3");
    c["iat"] = serde_json::json!(now_s());
    c["aud"] = serde_json::json!("hospital-app");
    assert!(keys.verify(hs(None, c).as_bytes(), NODE).is_ok());
}

#[test]
fn time_claims() {
    let keys = set(vec![hs_key("k1", "*", &[Role::Client])]);
    let at = |exp: i64, nbf: Option<i64>| {
        let now = now_s() as i64;
        let mut c = serde_json::json!({"sub": "pt-1", "exp": now + exp});
        if let Some(n) = nbf {
            c["nbf"] = serde_json::json!(now + n);
        }
        keys.verify(hs(Some("k1"), c).as_bytes(), NODE)
    };
    assert_eq!(at(-120, None), Err(Refusal::Expired));
    assert!(at(-5, None).is_ok(), "within the leeway");
    assert!(matches!(at(600, Some(120)), Err(Refusal::Refused(w)) if w.contains("nbf")));
    assert!(at(600, Some(5)).is_ok(), "nbf within the leeway");
    // exp is required.
    let r = keys.verify(
        hs(Some("k1"), serde_json::json!({"sub": "pt-1"})).as_bytes(),
        NODE,
    );
    assert!(
        matches!(&r, Err(Refusal::Refused(w)) if w.contains("exp")),
        "{r:?}"
    );
}

#[test]
fn keys_are_chosen_by_kid_and_must_match_the_signature() {
    let other = TokenKey::hs256(
        "k2",
        b"another-secret-another-secret-another",
        Subjects::Prefix(String::new()),
        vec![Role::Client],
    )
    .unwrap();
    let keys = set(vec![hs_key("k1", "*", &[Role::Client]), other]);
    let t = hs(Some("k1"), claims("pt-1"));
    assert!(keys.verify(t.as_bytes(), NODE).is_ok());
    // Signed with k1's secret but naming k2: the signature does not verify.
    let t = hs(Some("k2"), claims("pt-1"));
    assert!(matches!(
        keys.verify(t.as_bytes(), NODE),
        Err(Refusal::BadSignature(_))
    ));
    let t = hs(Some("k9"), claims("pt-1"));
    assert!(matches!(
        keys.verify(t.as_bytes(), NODE),
        Err(Refusal::UnknownKid(_))
    ));
    // Two keys: a token without kid cannot be placed.
    let t = hs(None, claims("pt-1"));
    assert!(matches!(
        keys.verify(t.as_bytes(), NODE),
        Err(Refusal::UnknownKid(_))
    ));
    // No keys at all.
    let t = hs(Some("k1"), claims("pt-1"));
    assert!(matches!(
        KeySet::default().verify(t.as_bytes(), NODE),
        Err(Refusal::UnknownKid(_))
    ));
    // A tampered payload keeps its signature and fails it.
    let t = hs(Some("k1"), claims("pt-1"));
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims("pt-2")).unwrap());
    parts[1] = &forged;
    let r = keys.verify(parts.join(".").as_bytes(), NODE);
    assert!(matches!(r, Err(Refusal::BadSignature(_))), "{r:?}");
    // Duplicate kids are a config error naming the second.
    let dup = KeySet::new(vec![
        hs_key("k1", "*", &[Role::Client]),
        hs_key("k1", "*", &[Role::Client]),
    ]);
    assert_eq!(dup.unwrap_err().0, 1);
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let keys = set(vec![hs_key("k1", "*", &[Role::Client, Role::Admin])]);
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
    };
    let body = b64(serde_json::json!({"sub": "pt-1", "exp": now_s() + 600, "role": "admin"}));
    for alg in ["none", "None", "HS512", "RS256"] {
        let unsigned = format!(
            "{}.{body}.",
            b64(serde_json::json!({"alg": alg, "kid": "k1"}))
        );
        assert!(looks_like_token(unsigned.as_bytes()));
        let r = keys.verify(unsigned.as_bytes(), NODE);
        assert!(matches!(r, Err(Refusal::BadSignature(_))), "{alg}: {r:?}");
    }
    // An ES256 header on an HS256 key.
    let es = format!(
        "{}.{body}.c2ln",
        b64(serde_json::json!({"alg": "ES256", "kid": "k1"}))
    );
    assert!(matches!(
        keys.verify(es.as_bytes(), NODE),
        Err(Refusal::BadSignature(_))
    ));
}

#[test]
fn subjects_roles_and_node() {
    let keys = set(vec![
        hs_key("pt", "pt-*", &[Role::Client]),
        hs_key("ops", "ops-1", &[Role::Admin]),
    ]);
    let with = |kid: &str, extra: serde_json::Value| {
        let mut c = claims("pt-1");
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        keys.verify(hs(Some(kid), c).as_bytes(), NODE)
    };
    assert!(
        matches!(with("pt", serde_json::json!({"sub": "dr-1"})), Err(Refusal::Refused(w)) if w.contains("outside"))
    );
    assert!(
        matches!(with("pt", serde_json::json!({"sub": "pt-1/x"})), Err(Refusal::Refused(w)) if w.contains("valid identity"))
    );
    // New identities follow `medlink passwd`'s rule: no look-alikes, nothing posing as the node.
    for odd in ["pt-b\u{43e}b", "pt-a b"] {
        let r = with("pt", serde_json::json!({ "sub": odd }));
        assert!(matches!(r, Err(Refusal::Refused(_))), "{odd}: {r:?}");
    }
    let any = set(vec![hs_key("any", "*", &[Role::Client])]);
    let t = hs(Some("any"), claims("$medlink"));
    assert!(matches!(
        any.verify(t.as_bytes(), NODE),
        Err(Refusal::Refused(_))
    ));
    assert!(
        matches!(with("pt", serde_json::json!({"role": "admin"})), Err(Refusal::Refused(w)) if w.contains("role"))
    );
    assert!(matches!(
        with("pt", serde_json::json!({"role": "node"})),
        Err(Refusal::Refused(_))
    ));
    assert!(matches!(
        with("pt", serde_json::json!({"role": "root"})),
        Err(Refusal::Refused(_))
    ));
    assert_eq!(
        with("pt", serde_json::json!({"role": "client"}))
            .unwrap()
            .role,
        Role::Client
    );
    assert!(
        matches!(with("pt", serde_json::json!({"node": "js.sz"})), Err(Refusal::Refused(w)) if w.contains("js.sz"))
    );
    assert!(with("pt", serde_json::json!({"node": NODE})).is_ok());
    // A key that grants admin makes an admin, for its own subjects only.
    let v = with("ops", serde_json::json!({"sub": "ops-1", "role": "admin"})).unwrap();
    assert_eq!(v.role, Role::Admin);
    assert!(
        with("ops", serde_json::json!({"sub": "ops-1"})).is_err(),
        "client not granted"
    );
    // Routing: only keys granting `client` make names routable.
    let routable = keys.client_subjects();
    assert!(routable.iter().any(|s| s.matches("pt-77")));
    assert!(!routable.iter().any(|s| s.matches("ops-1")));
}

#[test]
fn subject_patterns() {
    assert_eq!("*".parse(), Ok(Subjects::Prefix(String::new())));
    assert_eq!("pt-*".parse(), Ok(Subjects::Prefix("pt-".into())));
    assert_eq!("kiosk-3".parse(), Ok(Subjects::Exact("kiosk-3".into())));
    for bad in ["", "pt-**", "*pt", "p*t-*", "pt/*", "a+b"] {
        assert!(bad.parse::<Subjects>().is_err(), "{bad}");
    }
    let p: Subjects = "pt-*".parse().unwrap();
    assert!(p.matches("pt-1") && p.matches("pt-") && !p.matches("pt") && !p.matches("xpt-1"));
    assert_eq!(p.to_string(), "pt-*");
}

#[test]
fn shape_detection_and_secret_rules() {
    let t = hs(Some("k1"), claims("pt-1"));
    assert!(looks_like_token(t.as_bytes()));
    assert_eq!(unverified_subject(t.as_bytes()).as_deref(), Some("pt-1"));
    for not in [
        &b"test-password"[..],
        b"a.b.c",
        b"",
        b"...",
        b"e30.e30",
        "é.é.é".as_bytes(),
    ] {
        assert!(!looks_like_token(not), "{not:?}");
    }
    // `{}` as header: no alg, not a token.
    assert!(!looks_like_token(b"e30.e30.e30"));
    assert!(TokenKey::hs256(
        "k",
        b"short",
        Subjects::Prefix(String::new()),
        vec![Role::Client]
    )
    .is_err());
    assert!(TokenKey::hs256(
        "",
        SECRET,
        Subjects::Prefix(String::new()),
        vec![Role::Client]
    )
    .is_err());
    assert!(TokenKey::hs256("k", SECRET, Subjects::Prefix(String::new()), vec![]).is_err());
}

#[test]
fn es256_and_eddsa_verify_with_public_keys_only() {
    for (alg, kalg, rc) in [
        (
            Algorithm::ES256,
            KeyAlg::ES256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
        (Algorithm::EdDSA, KeyAlg::EdDSA, &rcgen::PKCS_ED25519),
    ] {
        let pair = rcgen::KeyPair::generate_for(rc).unwrap();
        let private = pair.serialize_pem();
        let public = pair.public_key_pem();
        let enc = match kalg {
            KeyAlg::ES256 => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
        };
        let any = || Subjects::Prefix(String::new());
        let refused =
            TokenKey::public_pem("k", kalg, private.as_bytes(), any(), vec![Role::Client]);
        assert!(refused.unwrap_err().contains("private key"), "{alg:?}");
        assert!(TokenKey::public_pem("k", kalg, b"junk", any(), vec![Role::Client]).is_err());
        let keys = set(vec![TokenKey::public_pem(
            "k",
            kalg,
            public.as_bytes(),
            any(),
            vec![Role::Client],
        )
        .unwrap()]);
        let t = sign(alg, Some("k"), &claims("pt-1"), &enc);
        assert_eq!(
            keys.verify(t.as_bytes(), NODE).unwrap().name,
            "pt-1",
            "{alg:?}"
        );
        // Another pair's signature does not verify.
        let stranger = rcgen::KeyPair::generate_for(rc).unwrap().serialize_pem();
        let enc2 = match kalg {
            KeyAlg::ES256 => EncodingKey::from_ec_pem(stranger.as_bytes()).unwrap(),
            _ => EncodingKey::from_ed_pem(stranger.as_bytes()).unwrap(),
        };
        let t = sign(alg, Some("k"), &claims("pt-1"), &enc2);
        assert!(
            matches!(
                keys.verify(t.as_bytes(), NODE),
                Err(Refusal::BadSignature(_))
            ),
            "{alg:?}"
        );
        // An HS256 token made with the public key as secret (the classic confusion) is refused.
        let t = sign(
            Algorithm::HS256,
            Some("k"),
            &claims("pt-1"),
            &EncodingKey::from_secret(public.as_bytes()).unwrap(),
        );
        assert!(
            matches!(
                keys.verify(t.as_bytes(), NODE),
                Err(Refusal::BadSignature(_))
            ),
            "{alg:?}"
        );
    }
}

#[test]
fn a_reload_replaces_every_key_at_once() {
    let shared = TokenKeys::new(NODE, set(vec![hs_key("old", "*", &[Role::Client])]));
    let t = hs(Some("old"), claims("pt-1"));
    assert!(shared.current().verify(t.as_bytes(), NODE).is_ok());
    let g = shared.generation();
    shared.replace(set(vec![hs_key("new", "*", &[Role::Client])]));
    assert!(shared.generation() > g);
    assert!(matches!(
        shared.current().verify(t.as_bytes(), NODE),
        Err(Refusal::UnknownKid(_))
    ));
}
