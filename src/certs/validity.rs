//! Reads `notAfter` from a DER certificate: just enough DER to walk to the
//! validity field, so metrics and checks can report expiry without a full
//! X.509 parser.

/// Split one DER element off `input`: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `notAfter` of a DER X.509 certificate as Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = tlv(der)? else { return None };
    let (SEQUENCE, tbs, _) = tlv(cert)? else { return None };
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    // serial, signature algorithm, issuer
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, r) = tlv(validity)?; // notBefore
    let (tag, t, _) = tlv(r)?;
    let t = std::str::from_utf8(t).ok()?;
    let (year, t) = match tag {
        0x17 => {
            // UTCTime: YYMMDDHHMMSSZ, years 1950..2049
            let yy: i32 = t.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, t.get(2..)?)
        }
        0x18 => (t.get(..4)?.parse().ok()?, t.get(4..)?), // GeneralizedTime: YYYYMMDDHHMMSSZ
        _ => return None,
    };
    let n = |i: usize| -> Option<u8> { t.get(i..i + 2)?.parse().ok() };
    let date = time::Date::from_calendar_date(year, time::Month::try_from(n(0)?).ok()?, n(2)?).ok()?;
    let at = date.with_hms(n(4)?, n(6)?, n(8)?).ok()?.assume_utc();
    Some(at.unix_timestamp())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_not_after_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["example.org".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(super::not_after(cert.der()), Some(1941321600));
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(super::not_after(b"\x30\x03\x02\x01"), None);
        assert_eq!(super::not_after(b""), None);
    }
}
