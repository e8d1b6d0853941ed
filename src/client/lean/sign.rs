//! SigV4 for the one request shape the lean path sends, without aws-sigv4's general machinery
//! per call: the signing key is derived once per (day, region, service, secret) and kept, and
//! the canonical request and string to sign are written into one buffer.
//!
//! It signs what `aws_sigv4::http_request::sign` signs with the SDK's default settings for a
//! PutRecords POST to `/` with no query and these headers only: `content-length`,
//! `content-type`, `host`, `x-amz-date`, `x-amz-security-token` (a session token is signed)
//! and `x-amz-target`. Anything else (an endpoint with a path, a query or its own headers, a
//! token that needs normalizing) goes through aws-sigv4; the tests below hold the two to the
//! same signatures.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use sha2::{Digest, Sha256};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The headers a fast-path request signs, as the SDK lists them (sorted).
const SIGNED_WITH_TOKEN: &str =
    "content-length;content-type;host;x-amz-date;x-amz-security-token;x-amz-target";
const SIGNED_WITHOUT_TOKEN: &str = "content-length;content-type;host;x-amz-date;x-amz-target";

/// What signing adds to the request.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Signature {
    /// `x-amz-date`.
    pub(super) amz_date: String,
    /// `authorization`.
    pub(super) authorization: String,
}

/// The day's signing key, kept until the day, region, service or secret changes.
struct Key {
    date: [u8; 8],
    region: String,
    service: String,
    secret: String,
    key: Vec<u8>,
}

/// Signs fast-path requests, keeping the signing key between calls.
#[derive(Default)]
pub(super) struct Signer {
    key: Mutex<Option<Key>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

/// Whether `token` goes into the canonical request as it is (aws-sigv4 trims a header value
/// and folds its inner runs of spaces: a token of visible ASCII needs neither).
pub(super) fn token_signs_verbatim(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_graphic())
}

impl Signer {
    /// The signature of a PutRecords POST to `/` on `host` (the `host` header aws-sigv4
    /// signs: the authority without a default port), carrying `content_type`, `target` and
    /// `body`, by `credentials` at `time`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sign(
        &self,
        host: &str,
        content_type: &str,
        target: &str,
        body: &[u8],
        credentials: &Credentials,
        time: SystemTime,
        region: &str,
        service: &str,
    ) -> Signature {
        let amz_date = amz_date(time);
        let date = &amz_date[..8];
        let token = credentials.session_token();
        let signed_headers = if token.is_some() {
            SIGNED_WITH_TOKEN
        } else {
            SIGNED_WITHOUT_TOKEN
        };
        let mut text = String::with_capacity(512);
        let _ = write!(
            text,
            "POST\n/\n\ncontent-length:{}\ncontent-type:{content_type}\nhost:{host}\nx-amz-date:{amz_date}\n",
            body.len()
        );
        if let Some(token) = token {
            let _ = writeln!(text, "x-amz-security-token:{token}");
        }
        let _ = write!(text, "x-amz-target:{target}\n\n{signed_headers}\n");
        push_hex(&mut text, &Sha256::digest(body));
        let request_hash = Sha256::digest(text.as_bytes());
        text.clear();
        let _ = write!(
            text,
            "{ALGORITHM}\n{amz_date}\n{date}/{region}/{service}/aws4_request\n"
        );
        push_hex(&mut text, &request_hash);
        let signature = self.with_key(date, region, service, credentials, time, |key| {
            calculate_signature(key, text.as_bytes())
        });
        let authorization = format!(
            "{ALGORITHM} Credential={}/{date}/{region}/{service}/aws4_request, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id()
        );
        Signature {
            amz_date,
            authorization,
        }
    }

    fn with_key<T>(
        &self,
        date: &str,
        region: &str,
        service: &str,
        credentials: &Credentials,
        time: SystemTime,
        f: impl FnOnce(&[u8]) -> T,
    ) -> T {
        let mut cached = self
            .key
            .lock()
            .expect("no panic while holding the signing key");
        let fresh = cached.as_ref().is_some_and(|k| {
            k.date == date.as_bytes()
                && k.region == region
                && k.service == service
                && k.secret == credentials.secret_access_key()
        });
        if !fresh {
            let secret = credentials.secret_access_key();
            let key = generate_signing_key(secret, time, region, service);
            *cached = Some(Key {
                date: date.as_bytes().try_into().expect("yyyymmdd is 8 bytes"),
                region: region.to_owned(),
                service: service.to_owned(),
                secret: secret.to_owned(),
                key: key.as_ref().to_vec(),
            });
        }
        f(&cached.as_ref().expect("set above").key)
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// `time` as SigV4's `yyyymmddThhmmssZ` (UTC, whole seconds; a time before 1970 signs as
/// 1970-01-01, which no server accepts either way).
pub(super) fn amz_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    use std::time::Duration;

    /// aws-sigv4's signature of the same request, as `PutPath` signs on its general path.
    fn by_aws_sigv4(
        uri: &str,
        body: &[u8],
        credentials: &Credentials,
        time: SystemTime,
        region: &str,
    ) -> Signature {
        let identity = credentials.clone().into();
        let length = body.len().to_string();
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "Kinesis_20131202.PutRecords"),
            ("content-length", length.as_str()),
        ];
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("kinesis")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable =
            SignableRequest::new("POST", uri, headers.into_iter(), SignableBody::Bytes(body))
                .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let (headers, _) = instructions.into_parts();
        let value = |name: &str| {
            headers
                .iter()
                .find(|h| h.name() == name)
                .map(|h| h.value().to_owned())
                .unwrap()
        };
        Signature {
            amz_date: value("x-amz-date"),
            authorization: value("authorization"),
        }
    }

    #[test]
    fn signs_as_aws_sigv4_signs() {
        let signer = Signer::default();
        let with_token =
            Credentials::new("AKID", "secret/+key", Some("tok+en/=".into()), None, "t");
        let without = Credentials::new("AKID2", "other", None, None, "t");
        let bodies: [&[u8]; 3] = [b"", br#"{"Records":[],"StreamName":"s"}"#, &[7u8; 5000]];
        // Across days and years (the cached key must follow the date), leap days included.
        let times = [
            0u64,
            951_782_400,
            1_700_000_000,
            1_709_164_799,
            1_709_164_800,
            4_102_444_799,
        ]
        .map(|s| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(999));
        for (uri, host) in [
            (
                "https://kinesis.eu-west-1.amazonaws.com/",
                "kinesis.eu-west-1.amazonaws.com",
            ),
            (
                "https://kinesis.eu-west-1.amazonaws.com:443/",
                "kinesis.eu-west-1.amazonaws.com",
            ),
            ("http://127.0.0.1:4567/", "127.0.0.1:4567"),
            ("http://localhost:80/", "localhost"),
        ] {
            for credentials in [&with_token, &without] {
                for body in bodies {
                    for time in times {
                        for region in ["eu-west-1", "us-east-1"] {
                            assert_eq!(
                                signer.sign(
                                    host,
                                    "application/x-amz-json-1.1",
                                    "Kinesis_20131202.PutRecords",
                                    body,
                                    credentials,
                                    time,
                                    region,
                                    "kinesis"
                                ),
                                by_aws_sigv4(uri, body, credentials, time, region),
                                "{uri} {time:?} {region}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dates_as_the_calendar_has_them() {
        for (secs, text) in [
            (0, "19700101T000000Z"),
            (951_782_400, "20000229T000000Z"),
            (1_700_000_000, "20231114T221320Z"),
            (1_709_251_199, "20240229T235959Z"),
            (4_102_444_800, "21000101T000000Z"),
        ] {
            assert_eq!(amz_date(UNIX_EPOCH + Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn tokens_that_need_normalizing_go_the_general_way() {
        assert!(token_signs_verbatim("IQoJb3JpZ2luX2VjE+/="));
        assert!(!token_signs_verbatim(" padded "));
        assert!(!token_signs_verbatim("two  spaces"));
        assert!(!token_signs_verbatim("caf\u{e9}"));
    }
}
