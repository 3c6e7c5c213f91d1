//! What a token allows: the topics its holder may subscribe to and publish on, as patterns.

use std::fmt;

/// A topic pattern from a token's claims: a topic's exact name, or a prefix followed by `*`
/// (`prices.*` matches `prices.eur` and `prices.eur.spot`; `*` alone matches every topic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPattern {
    Exact(Box<str>),
    /// Topics that start with this prefix and have at least one byte more.
    Prefix(Box<str>),
    Any,
}

impl TopicPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.find('*') {
            None if text.is_empty() => Err("an empty topic pattern".into()),
            None => Ok(Self::Exact(text.into())),
            Some(at) if at + 1 == text.len() => match &text[..at] {
                "" => Ok(Self::Any),
                prefix => Ok(Self::Prefix(prefix.into())),
            },
            Some(_) => Err(format!(
                "topic pattern `{text}`: a `*` may only end a pattern"
            )),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(name) => **name == *topic,
            Self::Prefix(prefix) => topic.len() > prefix.len() && topic.starts_with(&**prefix),
            Self::Any => true,
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Any => f.write_str("*"),
        }
    }
}

/// The topics a verified token allows, from its `subscribe` and `publish` claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// The token's subject (`sub`), for the logs.
    pub subject: Option<Box<str>>,
    /// `None`: the claim is absent, and subscribing is not restricted.
    pub subscribe: Option<Vec<TopicPattern>>,
    /// `None`: the claim is absent, and the token allows no publishing.
    pub publish: Option<Vec<TopicPattern>>,
}

impl Grants {
    /// Builds the grants from the claims' pattern lists; a bad pattern names its claim.
    pub fn from_claims(
        subject: Option<String>,
        subscribe: Option<Vec<String>>,
        publish: Option<Vec<String>>,
    ) -> Result<Self, String> {
        let patterns = |claim: &str, list: Option<Vec<String>>| {
            list.map(|list| {
                list.iter()
                    .map(|text| TopicPattern::parse(text))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("claim `{claim}`: {err}"))
            })
            .transpose()
        };
        Ok(Self {
            subject: subject.map(Into::into),
            subscribe: patterns("subscribe", subscribe)?,
            publish: patterns("publish", publish)?,
        })
    }

    /// Whether the token lets its holder subscribe to `topic`: any topic when the claim is
    /// absent, else one its patterns match.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(topic)))
    }

    /// Whether the token lets its holder publish on `topic`: only one its `publish`
    /// patterns match.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish
            .as_ref()
            .is_some_and(|patterns| patterns.iter().any(|p| p.matches(topic)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_prefixes_and_everything() {
        let p = |text: &str| TopicPattern::parse(text).expect("a pattern");
        assert!(p("news").matches("news"));
        assert!(!p("news").matches("news2") && !p("news").matches("new"));
        assert!(p("prices.*").matches("prices.eur"));
        assert!(p("prices.*").matches("prices.eur.spot"));
        assert!(
            !p("prices.*").matches("prices."),
            "the star stands for at least a byte"
        );
        assert!(!p("prices.*").matches("pricesX"));
        assert!(p("chat:*").matches("chat:lobby"));
        assert!(p("*").matches("anything"));
        assert!(TopicPattern::parse("a*b").is_err());
        assert!(TopicPattern::parse("**").is_err());
        assert!(TopicPattern::parse("").is_err());
        assert_eq!(p("prices.*").to_string(), "prices.*");
    }

    #[test]
    fn absent_claims_leave_subscribing_open_and_publishing_closed() {
        let none = Grants::default();
        assert!(none.may_subscribe("any"));
        assert!(!none.may_publish("any"));
        let some = Grants::from_claims(
            Some("alice".into()),
            Some(vec!["prices.*".into(), "news".into()]),
            Some(vec!["chat.alice".into()]),
        )
        .expect("good claims");
        assert!(some.may_subscribe("prices.usd") && some.may_subscribe("news"));
        assert!(!some.may_subscribe("chat.bob"));
        assert!(some.may_publish("chat.alice") && !some.may_publish("news"));
        let empty = Grants::from_claims(None, Some(vec![]), None).expect("empty list");
        assert!(!empty.may_subscribe("news"), "an empty list allows nothing");
        let bad = Grants::from_claims(None, None, Some(vec!["a*b".into()]));
        assert!(bad.expect_err("refused").contains("claim `publish`"));
    }
}
