//! The operators' list filters, parsed once at the service's edge into enums: a txn filter
//! (by the coordinator's phase, or in doubt at a participant) and a saga filter (by the saga
//! log's state). The wire carries their names; everything behind the edge uses the enums.

use txn_coordinator_core::core::TxnView;
use txn_types::rec::SagaState;
use txn_types::types::InvalidInput;

/// Which txns `ListTxns` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFilter {
    All,
    Preparing,
    Deciding,
    Committing,
    /// Prepared at a participant, whatever the coordinator holds.
    InDoubt,
}

/// What a listed txn is, as operators read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnKind {
    Preparing,
    Deciding,
    Committing,
    InDoubt,
}

impl TxnKind {
    pub fn of(view: &TxnView) -> Self {
        match view {
            TxnView::Preparing => TxnKind::Preparing,
            TxnView::Deciding => TxnKind::Deciding,
            TxnView::Committing { .. } => TxnKind::Committing,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TxnKind::Preparing => "preparing",
            TxnKind::Deciding => "deciding",
            TxnKind::Committing => "committing",
            TxnKind::InDoubt => "in-doubt",
        }
    }
}

impl TxnFilter {
    /// The wire's `state` field; empty means every txn.
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        Ok(match raw {
            "" => TxnFilter::All,
            "preparing" => TxnFilter::Preparing,
            "deciding" => TxnFilter::Deciding,
            "committing" => TxnFilter::Committing,
            "in-doubt" => TxnFilter::InDoubt,
            other => {
                return Err(InvalidInput::new(
                    "state",
                    format!("{other:?} is not one of preparing, deciding, committing, in-doubt"),
                ));
            }
        })
    }

    pub fn admits(self, kind: TxnKind) -> bool {
        match self {
            TxnFilter::All => true,
            TxnFilter::Preparing => kind == TxnKind::Preparing,
            TxnFilter::Deciding => kind == TxnKind::Deciding,
            TxnFilter::Committing => kind == TxnKind::Committing,
            TxnFilter::InDoubt => kind == TxnKind::InDoubt,
        }
    }

    /// Whether the participants' in-doubt txns are wanted.
    pub fn wants_in_doubt(self) -> bool {
        matches!(self, TxnFilter::All | TxnFilter::InDoubt)
    }
}

/// Which sagas `ListSagas` shows: every one, or those in one state of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaFilter(Option<SagaState>);

/// The operators' name of a saga state.
pub fn saga_state_name(state: SagaState) -> &'static str {
    match state {
        SagaState::Running => "running",
        SagaState::Compensating => "compensating",
        SagaState::Completed => "completed",
        SagaState::Compensated => "compensated",
        SagaState::Parked => "parked",
        SagaState::Unspecified => "unknown",
    }
}

impl SagaFilter {
    /// The wire's `state` field; empty means every saga.
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        const STATES: [SagaState; 5] = [
            SagaState::Running,
            SagaState::Compensating,
            SagaState::Completed,
            SagaState::Compensated,
            SagaState::Parked,
        ];
        if raw.is_empty() {
            return Ok(SagaFilter(None));
        }
        STATES
            .into_iter()
            .find(|s| saga_state_name(*s) == raw)
            .map(|s| SagaFilter(Some(s)))
            .ok_or_else(|| {
                InvalidInput::new(
                    "state",
                    format!(
                        "{raw:?} is not one of running, compensating, completed, compensated, parked"
                    ),
                )
            })
    }

    pub fn admits(self, state: SagaState) -> bool {
        self.0.is_none_or(|s| s == state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_their_names_and_refuse_others_naming_the_field() {
        assert_eq!(TxnFilter::parse("").unwrap(), TxnFilter::All);
        let f = TxnFilter::parse("in-doubt").unwrap();
        assert!(f.admits(TxnKind::InDoubt) && !f.admits(TxnKind::Committing));
        assert!(
            TxnFilter::parse("committing")
                .unwrap()
                .admits(TxnKind::Committing)
        );
        assert_eq!(TxnFilter::parse("done").unwrap_err().field, "state");
        let s = SagaFilter::parse("parked").unwrap();
        assert!(s.admits(SagaState::Parked) && !s.admits(SagaState::Running));
        assert!(SagaFilter::parse("").unwrap().admits(SagaState::Completed));
        assert_eq!(SagaFilter::parse("stuck").unwrap_err().field, "state");
    }
}
