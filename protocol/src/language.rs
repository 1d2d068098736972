//! The transaction language users type: `r(1)w(2=22)r(3)w(5=34)`.
//!
//! A transaction is a non-empty sequence of reads and writes:
//!
//! ```text
//! transaction = ws, op, { ws, op }, ws ;
//! op          = read | write ;
//! read        = ( "r" | "R" ), ws, "(", ws, account, ws, ")" ;
//! write       = ( "w" | "W" ), ws, "(", ws, account, ws, "=", ws, balance, ws, ")" ;
//! account     = digit, { digit } ;               (* 0 to 9223372036854775807 *)
//! balance     = [ "-" ], digit, { digit } ;      (* any i64; no leading "+" *)
//! digit       = "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" ;
//! ws          = { ? any Unicode whitespace ? } ;
//! ```
//!
//! Operations are separated by whitespace only (or nothing): accepting `,` or `;` as well
//! would give one transaction several spellings for no gain, and a strict grammar keeps typos
//! from being silently read as something else.
//!
//! Errors say what was expected, where, and in which input, because the user usually typed the
//! transaction on a command line and needs to see it echoed back:
//!
//! ```text
//! expected ')' at column 11 in "r(1)w(2=22"
//! ```
//!
//! Columns are 1-based and counted in characters, not bytes, so they match what a terminal
//! shows; an input that ends too early gets the column one past its last character. The quoted
//! input is escaped like a Rust string literal (so a newline cannot split the message) and is
//! cut to its first 80 characters, followed by `...`, so a huge input cannot flood a log.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::wire::{Account, Balance};

/// How many characters of the input an error message quotes before cutting it short.
const QUOTE_LIMIT: usize = 80;

/// One operation of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `r(account)`
    Read(Account),
    /// `w(account=balance)`
    Write(Account, Balance),
}

impl Op {
    /// The account the operation touches.
    pub fn account(&self) -> Account {
        match *self {
            Op::Read(account) | Op::Write(account, _) => account,
        }
    }
}

impl fmt::Display for Op {
    /// Writes the canonical spelling, which [`parse_transaction`] reads back unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read(account) => write!(f, "r({account})"),
            Op::Write(account, balance) => write!(f, "w({account}={balance})"),
        }
    }
}

/// A transaction as the user wrote it: its operations in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTransaction {
    pub ops: Vec<Op>,
}

impl ParsedTransaction {
    /// Accounts read, in the order first read, each once.
    pub fn read_set(&self) -> Vec<Account> {
        let mut seen = BTreeSet::new();
        self.ops
            .iter()
            .filter_map(|op| match *op {
                Op::Read(account) if seen.insert(account) => Some(account),
                _ => None,
            })
            .collect()
    }

    /// The balance each written account ends up with: a later write to the same account
    /// overrides an earlier one, as it would if the writes were applied in order.
    pub fn write_set(&self) -> BTreeMap<Account, Balance> {
        self.ops
            .iter()
            .filter_map(|op| match *op {
                Op::Write(account, balance) => Some((account, balance)),
                Op::Read(_) => None,
            })
            .collect()
    }

    /// Whether the transaction writes nothing.
    pub fn is_read_only(&self) -> bool {
        self.ops.iter().all(|op| matches!(op, Op::Read(_)))
    }
}

impl fmt::Display for ParsedTransaction {
    /// Writes the operations back to back, the shortest spelling that parses to the same ops.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ops.iter().try_for_each(|op| write!(f, "{op}"))
    }
}

impl FromStr for ParsedTransaction {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse_transaction(input)
    }
}

/// Why an input is not a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// 1-based character (not byte) position of the problem; one past the end if the input
    /// ended too early.
    pub column: usize,
    /// The whole explanation, including the column and the quoted input.
    pub message: String,
}

/// Parses a transaction such as `r(1) w(2=-22)`; see the module documentation for the grammar.
pub fn parse_transaction(input: &str) -> Result<ParsedTransaction, ParseError> {
    Parser::new(input).transaction()
}

/// A cursor over the input's characters; working on `char`s rather than bytes makes columns
/// come out in characters and rules out slicing inside a multi-byte character.
struct Parser<'a> {
    input: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser { input, chars: input.chars().collect(), pos: 0 }
    }

    fn transaction(mut self) -> Result<ParsedTransaction, ParseError> {
        let mut ops = Vec::new();
        loop {
            self.skip_whitespace();
            let op = match self.peek() {
                None => break,
                Some('r' | 'R') => {
                    self.pos += 1;
                    self.read()?
                }
                Some('w' | 'W') => {
                    self.pos += 1;
                    self.write()?
                }
                Some(_) => return Err(self.expected("'r' or 'w'")),
            };
            ops.push(op);
        }
        if ops.is_empty() {
            // Nothing to point at or quote: the input is blank.
            return Err(ParseError { column: 1, message: "the transaction is empty".into() });
        }
        Ok(ParsedTransaction { ops })
    }

    /// The rest of `r(account)`, after the `r`.
    fn read(&mut self) -> Result<Op, ParseError> {
        self.punctuation('(')?;
        let account = self.account()?;
        self.punctuation(')')?;
        Ok(Op::Read(account))
    }

    /// The rest of `w(account=balance)`, after the `w`.
    fn write(&mut self) -> Result<Op, ParseError> {
        self.punctuation('(')?;
        let account = self.account()?;
        self.punctuation('=')?;
        let balance = self.balance()?;
        self.punctuation(')')?;
        Ok(Op::Write(account, balance))
    }

    fn punctuation(&mut self, expected: char) -> Result<(), ParseError> {
        self.skip_whitespace();
        if self.peek() == Some(expected) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.expected(&format!("'{expected}'")))
        }
    }

    fn account(&mut self) -> Result<Account, ParseError> {
        self.skip_whitespace();
        let start = self.pos;
        let digits = self.digits();
        if digits.is_empty() {
            // `r(-1)` is a likelier mistake than a stray '-', so name it.
            return Err(if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.error_at(start, "account numbers cannot be negative")
            } else {
                self.expected("an account number")
            });
        }
        digits.parse::<Account>().map_err(|_| {
            self.error_at(start, &format!("account {} is out of range (0 to {})", shorten(&digits), Account::MAX))
        })
    }

    fn balance(&mut self) -> Result<Balance, ParseError> {
        self.skip_whitespace();
        let start = self.pos;
        let negative = self.peek() == Some('-');
        if negative {
            self.pos += 1;
        }
        let digits = self.digits();
        if digits.is_empty() {
            return Err(if negative { self.expected("a digit after '-'") } else { self.expected("a balance") });
        }
        // The sign goes into the text parsed, not applied afterwards, so that
        // -9223372036854775808 (whose magnitude is not an i64) is accepted.
        let text = if negative { format!("-{digits}") } else { digits };
        text.parse::<Balance>().map_err(|_| {
            self.error_at(
                start,
                &format!("balance {} is out of range ({} to {})", shorten(&text), Balance::MIN, Balance::MAX),
            )
        })
    }

    /// Consumes a run of ASCII digits. Other Unicode digits (`١`, `１`) are refused because
    /// `i64` parsing would refuse them anyway, and saying so at the right column is clearer.
    fn digits(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn expected(&self, what: &str) -> ParseError {
        self.error_at(self.pos, &format!("expected {what}"))
    }

    fn error_at(&self, pos: usize, what: &str) -> ParseError {
        let column = pos + 1;
        ParseError { column, message: format!("{what} at column {column} in {}", quote(self.input)) }
    }
}

/// The input as a Rust-style string literal, cut to [`QUOTE_LIMIT`] characters.
fn quote(input: &str) -> String {
    let prefix: String = input.chars().take(QUOTE_LIMIT).collect();
    let ellipsis = if input.chars().nth(QUOTE_LIMIT).is_some() { "..." } else { "" };
    format!("{prefix:?}{ellipsis}")
}

/// A number as written, cut like [`quote`] so an absurdly long one cannot flood a log.
fn shorten(number: &str) -> String {
    // Numbers here are ASCII, but counting chars keeps this safe should that ever change.
    let prefix: String = number.chars().take(QUOTE_LIMIT).collect();
    if number.chars().nth(QUOTE_LIMIT).is_some() {
        format!("{prefix}...")
    } else {
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ops(input: &str) -> Vec<Op> {
        match parse_transaction(input) {
            Ok(tx) => tx.ops,
            Err(e) => panic!("{input:?} should parse, got: {e}"),
        }
    }

    fn error(input: &str) -> ParseError {
        match parse_transaction(input) {
            Ok(tx) => panic!("{input:?} should not parse, got {tx:?}"),
            Err(e) => e,
        }
    }

    fn message(input: &str) -> String {
        error(input).to_string()
    }

    #[test]
    fn parses_the_example() {
        assert_eq!(ops("r(1)w(2=22)r(3)w(5=34)"), vec![Op::Read(1), Op::Write(2, 22), Op::Read(3), Op::Write(5, 34)]);
    }

    #[test]
    fn allows_whitespace_between_and_inside_operations() {
        assert_eq!(ops(" r( 1 ) w(2 = -22) "), vec![Op::Read(1), Op::Write(2, -22)]);
        assert_eq!(ops("\tr\n(\r\n1\u{3000})\u{a0}w(2=3)\n"), vec![Op::Read(1), Op::Write(2, 3)]);
    }

    #[test]
    fn accepts_negative_balances_down_to_i64_min() {
        assert_eq!(ops("w(1=-5)"), vec![Op::Write(1, -5)]);
        assert_eq!(ops("w(1=-0)"), vec![Op::Write(1, 0)]);
        assert_eq!(ops("w(9223372036854775807=-9223372036854775808)"), vec![Op::Write(i64::MAX, i64::MIN)]);
    }

    #[test]
    fn letters_are_case_insensitive() {
        assert_eq!(ops("R(1)W(2=3)r(4)w(5=6)"), ops("r(1)w(2=3)r(4)w(5=6)"));
    }

    #[test]
    fn reports_missing_close_paren_one_past_the_end() {
        let e = error("r(1)w(2=22");
        assert_eq!(e.column, 11);
        assert_eq!(e.message, r#"expected ')' at column 11 in "r(1)w(2=22""#);
        assert_eq!(e.to_string(), e.message);
    }

    #[test]
    fn reports_each_kind_of_mistake() {
        assert_eq!(message("r(1)x(2)"), r#"expected 'r' or 'w' at column 5 in "r(1)x(2)""#);
        assert_eq!(message("r()"), r#"expected an account number at column 3 in "r()""#);
        assert_eq!(message("w(2)"), r#"expected '=' at column 4 in "w(2)""#);
        assert_eq!(message("w(2=)"), r#"expected a balance at column 5 in "w(2=)""#);
        assert_eq!(message("r1)"), r#"expected '(' at column 2 in "r1)""#);
        assert_eq!(message("r(1=2)"), r#"expected ')' at column 4 in "r(1=2)""#);
        assert_eq!(message("r(1 2)"), r#"expected ')' at column 5 in "r(1 2)""#);
        assert_eq!(message("w(1=2"), r#"expected ')' at column 6 in "w(1=2""#);
        assert_eq!(message("w(1=- 2)"), r#"expected a digit after '-' at column 6 in "w(1=- 2)""#);
        assert_eq!(message("w(1=+2)"), r#"expected a balance at column 5 in "w(1=+2)""#);
        assert_eq!(message("r(+1)"), r#"expected an account number at column 3 in "r(+1)""#);
        assert_eq!(message("r(-1)"), r#"account numbers cannot be negative at column 3 in "r(-1)""#);
        assert_eq!(message("r(-)"), r#"expected an account number at column 3 in "r(-)""#);
    }

    #[test]
    fn separators_other_than_whitespace_are_refused() {
        assert_eq!(message("r(1),r(2)"), r#"expected 'r' or 'w' at column 5 in "r(1),r(2)""#);
        assert_eq!(message("r(1);r(2)"), r#"expected 'r' or 'w' at column 5 in "r(1);r(2)""#);
    }

    #[test]
    fn empty_input_is_an_error() {
        for input in ["", " ", "\n\t \u{3000}"] {
            let e = error(input);
            assert_eq!(e.message, "the transaction is empty");
            assert_eq!(e.column, 1);
        }
    }

    #[test]
    fn overflow_names_the_number() {
        assert_eq!(
            message("r(99999999999999999999)"),
            "account 99999999999999999999 is out of range (0 to 9223372036854775807) \
             at column 3 in \"r(99999999999999999999)\""
        );
        assert_eq!(
            message("r(9223372036854775808)"),
            "account 9223372036854775808 is out of range (0 to 9223372036854775807) \
             at column 3 in \"r(9223372036854775808)\""
        );
        assert_eq!(
            message("w(1= -9223372036854775809)"),
            "balance -9223372036854775809 is out of range \
             (-9223372036854775808 to 9223372036854775807) \
             at column 6 in \"w(1= -9223372036854775809)\""
        );
        assert_eq!(
            message("w(1=9223372036854775808)"),
            "balance 9223372036854775808 is out of range \
             (-9223372036854775808 to 9223372036854775807) \
             at column 5 in \"w(1=9223372036854775808)\""
        );
    }

    #[test]
    fn a_huge_number_is_cut_in_the_message() {
        let input = format!("r({})", "9".repeat(1000));
        let e = error(&input);
        assert!(e.message.starts_with(&format!("account {}... is out of range", "9".repeat(80))));
    }

    #[test]
    fn leading_zeros_are_accepted() {
        assert_eq!(ops("r(007)w(0=-000)"), vec![Op::Read(7), Op::Write(0, 0)]);
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = error("é r(1)");
        assert_eq!(e.column, 1);
        assert_eq!(e.message, r#"expected 'r' or 'w' at column 1 in "é r(1)""#);
        let e = error("r(1)\u{3000}ü(2)");
        assert_eq!(e.column, 6);
        let e = error("w(1=😀)");
        assert_eq!(e.column, 5);
        assert_eq!(e.message, r#"expected a balance at column 5 in "w(1=😀)""#);
    }

    #[test]
    fn non_ascii_digits_are_not_numbers() {
        assert_eq!(error("r(１)").column, 3);
        assert_eq!(error("r(١)").column, 3);
    }

    #[test]
    fn long_inputs_are_quoted_up_to_80_characters() {
        let input = "é".repeat(100);
        let e = error(&input);
        assert_eq!(e.message, format!("expected 'r' or 'w' at column 1 in \"{}\"...", "é".repeat(80)));
        let exactly = format!("r(1){}", "x".repeat(76));
        assert_eq!(message(&exactly), format!("expected 'r' or 'w' at column 5 in \"{exactly}\""));
    }

    #[test]
    fn quoting_escapes_control_characters_and_quotes() {
        assert_eq!(message("r(1)\n\"x"), r#"expected 'r' or 'w' at column 6 in "r(1)\n\"x""#);
    }

    #[test]
    fn display_is_canonical() {
        let tx = ParsedTransaction { ops: vec![Op::Read(1), Op::Write(2, -22)] };
        assert_eq!(Op::Read(1).to_string(), "r(1)");
        assert_eq!(Op::Write(2, -22).to_string(), "w(2=-22)");
        assert_eq!(tx.to_string(), "r(1)w(2=-22)");
        assert_eq!(tx.to_string().parse::<ParsedTransaction>(), Ok(tx));
    }

    #[test]
    fn read_and_write_sets() {
        let tx = ParsedTransaction {
            ops: vec![
                Op::Read(3),
                Op::Write(2, 1),
                Op::Read(1),
                Op::Read(3),
                Op::Write(2, 5),
                Op::Write(0, -1),
                Op::Read(2),
            ],
        };
        assert_eq!(tx.read_set(), vec![3, 1, 2]);
        assert_eq!(tx.write_set(), BTreeMap::from([(0, -1), (2, 5)]));
        assert!(!tx.is_read_only());
        assert!(ParsedTransaction { ops: vec![Op::Read(1), Op::Read(1)] }.is_read_only());
        assert_eq!(Op::Write(4, 1).account(), 4);
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0..=i64::MAX).prop_map(Op::Read), (0..=i64::MAX, any::<i64>()).prop_map(|(a, b)| Op::Write(a, b)),]
    }

    /// Whitespace of several kinds, including none and non-ASCII ones.
    fn whitespace() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop::sample::select(vec![' ', '\t', '\n', '\r', '\u{a0}', '\u{2003}', '\u{3000}']),
            0..3,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    /// An op spelled with whitespace around every token and a random letter case.
    fn spaced_op() -> impl Strategy<Value = (Op, String)> {
        (op(), any::<bool>(), proptest::collection::vec(whitespace(), 6)).prop_map(|(op, upper, ws)| {
            let text = match op {
                Op::Read(a) => {
                    let letter = if upper { 'R' } else { 'r' };
                    format!("{letter}{}({}{a}{}){}", ws[0], ws[1], ws[2], ws[3])
                }
                Op::Write(a, b) => {
                    let letter = if upper { 'W' } else { 'w' };
                    format!("{letter}{}({}{a}{}={}{b}{}){}", ws[0], ws[1], ws[2], ws[3], ws[4], ws[5])
                }
            };
            (op, text)
        })
    }

    fn check_error(input: &str, e: &ParseError) {
        let chars = input.chars().count();
        assert!((1..=chars + 1).contains(&e.column), "column {} outside 1..={} for {input:?}", e.column, chars + 1);
        if e.message != "the transaction is empty" {
            assert!(e.message.contains(&format!(" at column {} in \"", e.column)), "{}", e.message);
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(ops in proptest::collection::vec(op(), 1..20)) {
            let tx = ParsedTransaction { ops };
            prop_assert_eq!(parse_transaction(&tx.to_string()), Ok(tx));
        }

        #[test]
        fn round_trips_with_whitespace_between_ops(
            ops in proptest::collection::vec((op(), whitespace()), 1..20),
            leading in whitespace(),
        ) {
            let text: String = std::iter::once(leading)
                .chain(ops.iter().map(|(op, ws)| format!("{op}{ws}")))
                .collect();
            let expected: Vec<Op> = ops.into_iter().map(|(op, _)| op).collect();
            prop_assert_eq!(parse_transaction(&text).map(|tx| tx.ops), Ok(expected));
        }

        #[test]
        fn round_trips_with_whitespace_inside_ops(
            ops in proptest::collection::vec(spaced_op(), 1..20),
            leading in whitespace(),
        ) {
            let text: String =
                std::iter::once(leading).chain(ops.iter().map(|(_, t)| t.clone())).collect();
            let expected: Vec<Op> = ops.into_iter().map(|(op, _)| op).collect();
            prop_assert_eq!(parse_transaction(&text).map(|tx| tx.ops), Ok(expected));
        }

        #[test]
        fn arbitrary_text_never_panics(input in "\\PC*") {
            match parse_transaction(&input) {
                Ok(tx) => prop_assert_eq!(parse_transaction(&tx.to_string()), Ok(tx)),
                Err(e) => check_error(&input, &e),
            }
        }

        #[test]
        fn near_miss_text_never_panics(input in "[rwRW()=\\- 0-9x]{0,40}") {
            match parse_transaction(&input) {
                Ok(tx) => prop_assert_eq!(parse_transaction(&tx.to_string()), Ok(tx)),
                Err(e) => check_error(&input, &e),
            }
        }

        #[test]
        fn truncated_valid_text_fails_at_the_end(
            ops in proptest::collection::vec(op(), 1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            // Every proper prefix that stops inside an op must fail exactly at its end.
            let text = ParsedTransaction { ops }.to_string();
            let len = cut.index(text.len());
            let prefix = &text[..len];
            if let Err(e) = parse_transaction(prefix) {
                check_error(prefix, &e);
                if !prefix.is_empty() && !e.message.contains("out of range") {
                    prop_assert_eq!(e.column, prefix.chars().count() + 1, "{}", e.message);
                }
            }
        }
    }
}
