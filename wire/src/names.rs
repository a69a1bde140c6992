//! Wire names of fieldless enums, written once: [`wire_names!`] gives an enum its names on the
//! wire (`as_str`), the list of its values (`ALL`), `Display`, and `FromStr` with an error
//! type that names the refused word and lists the accepted ones.

/// `wire_names!(Type, ErrorType, "what" { Variant => "name", ... })`: the variants in order
/// (that order is `ALL`'s), each with its wire name.
macro_rules! wire_names {
    ($ty:ident, $err:ident, $what:literal { $($var:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$var),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$var => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[doc = concat!("A word that is not a ", $what, ".")]
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error("unknown {} `{0}`: use {}", $what, $crate::names::one_of(&[$($name),+]))]
        pub struct $err(pub String);

        impl std::str::FromStr for $ty {
            type Err = $err;

            fn from_str(s: &str) -> Result<$ty, $err> {
                $ty::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $err(s.to_string()))
            }
        }
    };
}

pub(crate) use wire_names;

/// `a, b or c`: the accepted names, for an error message.
pub(crate) fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [only] => only.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}
