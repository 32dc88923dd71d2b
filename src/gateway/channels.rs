//! Which local service a data channel goes to, by label (docs/protocol.md#channels-and-labels).

/// What a data channel is bridged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// The MA WebSocket API: the first channel whose label is not a side channel.
    Api,
    /// The Sendspin audio server.
    Sendspin,
    /// MA's `live_announcement` WebSocket.
    LiveAnnouncement,
    /// HTTP proxy served by the gateway itself.
    HttpProxy,
}

impl ChannelKind {
    pub fn name(self) -> &'static str {
        match self {
            ChannelKind::Api => "ma-api",
            ChannelKind::Sendspin => "sendspin",
            ChannelKind::LiveAnnouncement => "live_announcement",
            ChannelKind::HttpProxy => "http_proxy",
        }
    }
}

/// Why a channel is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A second channel of a kind this session already has.
    Duplicate(ChannelKind),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Duplicate(ChannelKind::Api) => {
                write!(f, "the session already has its API channel; a later unknown label cannot replace it")
            }
            Refusal::Duplicate(k) => write!(f, "the session already has a {} channel", k.name()),
        }
    }
}

/// Classify a newly opened channel given the kinds the session already has open.
/// Never assumes order or stream ids: routing is by label only.
pub fn classify(
    label: &str,
    existing: impl IntoIterator<Item = ChannelKind>,
) -> Result<ChannelKind, Refusal> {
    let kind = match label {
        "sendspin" => ChannelKind::Sendspin,
        "live_announcement" => ChannelKind::LiveAnnouncement,
        "http_proxy" => ChannelKind::HttpProxy,
        _ => ChannelKind::Api,
    };
    if existing.into_iter().any(|k| k == kind) {
        return Err(Refusal::Duplicate(kind));
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_label() {
        assert_eq!(classify("ma-api", []), Ok(ChannelKind::Api));
        assert_eq!(classify("anything", []), Ok(ChannelKind::Api));
        assert_eq!(
            classify("sendspin", [ChannelKind::Api]),
            Ok(ChannelKind::Sendspin)
        );
        assert_eq!(classify("http_proxy", []), Ok(ChannelKind::HttpProxy));
        assert_eq!(
            classify("live_announcement", []),
            Ok(ChannelKind::LiveAnnouncement)
        );
        // http_proxy opened before ma-api does not become the API channel.
        assert_eq!(
            classify("ma-api", [ChannelKind::HttpProxy]),
            Ok(ChannelKind::Api)
        );
    }

    #[test]
    fn refuses_later_unknown_and_duplicate_labels() {
        assert_eq!(
            classify("other", [ChannelKind::Api]),
            Err(Refusal::Duplicate(ChannelKind::Api))
        );
        assert_eq!(
            classify("sendspin", [ChannelKind::Api, ChannelKind::Sendspin]),
            Err(Refusal::Duplicate(ChannelKind::Sendspin))
        );
    }
}
