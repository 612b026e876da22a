//! The operators' list filters and state names, converted once at the service's edge between
//! the wire's enums (`TxnPhase`, `SagaPhase`) and the coordinator's own: a txn filter (by the
//! coordinator's phase, or in doubt at a participant) and a saga filter (by the saga log's
//! state). An enum value this build does not know is refused, naming the field.

use txn_coordinator_core::core::TxnView;
use txn_proto::pb::v1 as pb;
use txn_types::rec::SagaState;
use txn_types::types::InvalidInput;

/// Which txns `ListTxns` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFilter {
    All,
    /// Only txns of this kind.
    Only(TxnKind),
}

/// What a listed txn is, as operators read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnKind {
    Preparing,
    Deciding,
    Committing,
    /// Prepared at a participant, whatever the coordinator holds.
    InDoubt,
}

impl TxnKind {
    pub fn of(view: &TxnView) -> Self {
        match view {
            TxnView::Preparing | TxnView::Fencing => TxnKind::Preparing,
            TxnView::Deciding => TxnKind::Deciding,
            TxnView::Committing { .. } => TxnKind::Committing,
        }
    }

    /// The operators' name, as in log lines and messages.
    pub fn name(self) -> &'static str {
        match self {
            TxnKind::Preparing => "preparing",
            TxnKind::Deciding => "deciding",
            TxnKind::Committing => "committing",
            TxnKind::InDoubt => "in-doubt",
        }
    }

    pub fn to_wire(self) -> pb::TxnPhase {
        match self {
            TxnKind::Preparing => pb::TxnPhase::Preparing,
            TxnKind::Deciding => pb::TxnPhase::Deciding,
            TxnKind::Committing => pb::TxnPhase::Committing,
            TxnKind::InDoubt => pb::TxnPhase::InDoubt,
        }
    }
}

impl TxnFilter {
    /// The wire's `state` field; UNSPECIFIED means every txn. The phases only ShowTxn reports
    /// (committed, forced, unknown) name txns no list holds, so they are refused.
    pub fn from_wire(raw: i32) -> Result<Self, InvalidInput> {
        let kind = match pb::TxnPhase::try_from(raw) {
            Ok(pb::TxnPhase::Unspecified) => return Ok(TxnFilter::All),
            Ok(pb::TxnPhase::Preparing) => TxnKind::Preparing,
            Ok(pb::TxnPhase::Deciding) => TxnKind::Deciding,
            Ok(pb::TxnPhase::Committing) => TxnKind::Committing,
            Ok(pb::TxnPhase::InDoubt) => TxnKind::InDoubt,
            Ok(other) => {
                return Err(InvalidInput::new(
                    "state",
                    format!(
                        "{} is not a listable phase (PREPARING, DECIDING, COMMITTING, IN_DOUBT)",
                        other.as_str_name()
                    ),
                ));
            }
            Err(_) => {
                return Err(InvalidInput::new(
                    "state",
                    format!("{raw} is not a TxnPhase"),
                ));
            }
        };
        Ok(TxnFilter::Only(kind))
    }

    pub fn admits(self, kind: TxnKind) -> bool {
        match self {
            TxnFilter::All => true,
            TxnFilter::Only(k) => k == kind,
        }
    }

    /// Whether the participants' in-doubt txns are wanted.
    pub fn wants_in_doubt(self) -> bool {
        self.admits(TxnKind::InDoubt)
    }
}

/// Which sagas `ListSagas` shows: every one, or those in one state of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaFilter(Option<SagaState>);

/// The wire's name of a saga log state.
pub fn saga_phase(state: SagaState) -> pb::SagaPhase {
    match state {
        SagaState::Running => pb::SagaPhase::Running,
        SagaState::Compensating => pb::SagaPhase::Compensating,
        SagaState::Completed => pb::SagaPhase::Completed,
        SagaState::Compensated => pb::SagaPhase::Compensated,
        SagaState::Parked => pb::SagaPhase::Parked,
        SagaState::Unspecified => pb::SagaPhase::Unspecified,
    }
}

impl SagaFilter {
    /// The wire's `state` field; UNSPECIFIED means every saga.
    pub fn from_wire(raw: i32) -> Result<Self, InvalidInput> {
        Ok(SagaFilter(match pb::SagaPhase::try_from(raw) {
            Ok(pb::SagaPhase::Unspecified) => None,
            Ok(pb::SagaPhase::Running) => Some(SagaState::Running),
            Ok(pb::SagaPhase::Compensating) => Some(SagaState::Compensating),
            Ok(pb::SagaPhase::Completed) => Some(SagaState::Completed),
            Ok(pb::SagaPhase::Compensated) => Some(SagaState::Compensated),
            Ok(pb::SagaPhase::Parked) => Some(SagaState::Parked),
            Err(_) => {
                return Err(InvalidInput::new(
                    "state",
                    format!("{raw} is not a SagaPhase"),
                ));
            }
        }))
    }

    pub fn admits(self, state: SagaState) -> bool {
        self.0.is_none_or(|s| s == state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_convert_the_wire_enums_and_refuse_others_naming_the_field() {
        assert_eq!(TxnFilter::from_wire(0).unwrap(), TxnFilter::All);
        let f = TxnFilter::from_wire(pb::TxnPhase::InDoubt as i32).unwrap();
        assert!(f.admits(TxnKind::InDoubt) && !f.admits(TxnKind::Committing));
        assert!(f.wants_in_doubt());
        let c = TxnFilter::from_wire(pb::TxnPhase::Committing as i32).unwrap();
        assert!(c.admits(TxnKind::Committing) && !c.wants_in_doubt());
        assert_eq!(TxnFilter::from_wire(99).unwrap_err().field, "state");
        assert_eq!(
            TxnFilter::from_wire(pb::TxnPhase::Committed as i32)
                .unwrap_err()
                .field,
            "state"
        );
        for k in [
            TxnKind::Preparing,
            TxnKind::Deciding,
            TxnKind::Committing,
            TxnKind::InDoubt,
        ] {
            let back = TxnFilter::from_wire(k.to_wire() as i32).unwrap();
            assert_eq!(back, TxnFilter::Only(k));
        }
        let s = SagaFilter::from_wire(pb::SagaPhase::Parked as i32).unwrap();
        assert!(s.admits(SagaState::Parked) && !s.admits(SagaState::Running));
        assert!(
            SagaFilter::from_wire(0)
                .unwrap()
                .admits(SagaState::Completed)
        );
        assert_eq!(SagaFilter::from_wire(42).unwrap_err().field, "state");
        for st in [
            SagaState::Running,
            SagaState::Compensating,
            SagaState::Completed,
            SagaState::Compensated,
            SagaState::Parked,
        ] {
            let f = SagaFilter::from_wire(saga_phase(st) as i32).unwrap();
            assert_eq!(f, SagaFilter(Some(st)));
        }
    }
}
