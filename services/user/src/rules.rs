//! The seed's input rules, with its off-by-one fixed: the original compared with `>`/`<`
//! and so refused `a`, `z`, `A`, `Z`, `0` and `9` in passwords.

/// Nicknames: 1 to 21 bytes (the seed's `size() < 22`), no control characters.
pub fn nickname_ok(nickname: &str) -> bool {
    !nickname.trim().is_empty() && nickname.len() < 22 && !nickname.chars().any(char::is_control)
}

/// Passwords: 6 to 15 characters of letters, digits, `_` and `-`.
pub fn password_ok(password: &str) -> bool {
    (6..=15).contains(&password.len()) && password.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Mainland mobile numbers as the seed checks them: 11 digits, `1`, then `3`-`9`.
pub fn phone_ok(phone: &str) -> bool {
    let b = phone.as_bytes();
    b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1]) && b.iter().all(u8::is_ascii_digit)
}

/// Descriptions are free text up to this many bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_accept_the_letters_the_seed_refused() {
        for ok in ["azAZ09", "a_b-c9", "zzzzzz", "000000999999999"] {
            assert!(password_ok(ok), "{ok}");
        }
        for bad in ["short", "sixteen_chars_xx", "with space", "pässwörd", "semi;colon"] {
            assert!(!password_ok(bad), "{bad}");
        }
    }

    #[test]
    fn phones_follow_the_seed() {
        assert!(phone_ok("13800138000"));
        assert!(phone_ok("19912345678"));
        for bad in ["12800138000", "1380013800", "138001380001", "2380013800x", "1380013800a"] {
            assert!(!phone_ok(bad), "{bad}");
        }
    }

    #[test]
    fn nicknames_are_short_and_printable() {
        assert!(nickname_ok("alice"));
        assert!(nickname_ok("小明同学"));
        assert!(!nickname_ok(""));
        assert!(!nickname_ok("   "));
        assert!(!nickname_ok("a\nb"));
        assert!(!nickname_ok("这是一个非常长的昵称啊")); // 33 bytes
    }
}
