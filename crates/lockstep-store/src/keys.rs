//! Key layouts. Integers are big-endian so that byte order is numeric order; strings are
//! terminated by a 0x00 byte (names and ids never contain NUL: the validators refuse it), so
//! that a prefix scan over `(workflow, state)` matches exactly that pair.

/// Appends a string component and its terminator.
pub fn push_str(key: &mut Vec<u8>, part: &str) {
    key.extend_from_slice(part.as_bytes());
    key.push(0);
}

pub fn push_u64(key: &mut Vec<u8>, n: u64) {
    key.extend_from_slice(&n.to_be_bytes());
}

/// A signed timestamp encoded so that byte order is numeric order.
pub fn push_i64(key: &mut Vec<u8>, n: i64) {
    key.extend_from_slice(&((n as u64) ^ (1 << 63)).to_be_bytes());
}

pub fn u64_key(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

pub fn read_i64(bytes: &[u8]) -> Option<i64> {
    read_u64(bytes).map(|n| (n ^ (1 << 63)) as i64)
}

/// Builds a key from string parts.
pub fn strs(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::new();
    for part in parts {
        push_str(&mut key, part);
    }
    key
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; 9]
}

/// Splits a key into its NUL-terminated string parts.
pub fn split_strs(key: &[u8]) -> Vec<String> {
    key.split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// A readable rendering of a key for error messages.
pub fn show(key: &[u8]) -> String {
    if !key.is_empty()
        && key
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == 0)
    {
        format!("{:?}", String::from_utf8_lossy(key).replace('\0', "/"))
    } else {
        format!("0x{}", hex::encode(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_numbers_and_times() {
        let mut a = Vec::new();
        push_i64(&mut a, -5);
        let mut b = Vec::new();
        push_i64(&mut b, 3);
        assert!(a < b);
        assert_eq!(read_i64(&a), Some(-5));
        assert!(u64_key(255) < u64_key(256));
        assert_eq!(prefix_end(b"ab\x00"), b"ab\x01");
        assert_eq!(
            split_strs(&strs(&["wf", "state", "id"])),
            ["wf", "state", "id"]
        );
    }
}
