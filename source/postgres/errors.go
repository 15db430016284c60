package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/databus-go/databus/schema"
)

// SettingError refuses a server (or role) whose settings make capture
// impossible. It names the setting, its value and what to do.
type SettingError struct {
	Setting string // for example "wal_level" or "role alice"
	Value   string // the server's value, for example "replica"
	Fix     string // what to change, for example "set wal_level=logical in postgresql.conf and restart"
}

func (e *SettingError) Error() string {
	return fmt.Sprintf("databus: postgres %s is %s; %s", e.Setting, e.Value, e.Fix)
}

// SlotLostError says that the replication slot can no longer give the
// changes after the resume position: they are lost to this relay.
type SlotLostError struct {
	Slot   string
	Reason string // "dropped", "invalidated" or "ahead"
	// SCN is the position capture had to resume from (the commit end LSN
	// of the last window the relay holds or released).
	SCN uint64
	// Confirmed is the slot's confirmed_flush_lsn when Reason is "ahead".
	Confirmed uint64
	Cause     error // the server's error, if it reported one
}

func (e *SlotLostError) Error() string {
	var what string
	switch e.Reason {
	case "dropped":
		what = fmt.Sprintf("replication slot %q does not exist (it was dropped)", e.Slot)
	case "invalidated":
		what = fmt.Sprintf("replication slot %q was invalidated (wal_status lost: the server removed WAL it still needed, see max_slot_wal_keep_size)", e.Slot)
	case "ahead":
		what = fmt.Sprintf("replication slot %q has confirmed up to %s, beyond the resume position %s (it was recreated, or another client consumed it)",
			e.Slot, lsnString(e.Confirmed), lsnString(e.SCN))
	default:
		what = fmt.Sprintf("replication slot %q is unusable (%s)", e.Slot, e.Reason)
	}
	s := fmt.Sprintf("databus: postgres %s, so capture cannot resume at %s: the changes after that position are lost to this relay. "+
		"To recover: drop the slot if it still exists (SELECT pg_drop_replication_slot('%s')), let the relay recreate it "+
		"(or create it with pg_create_logical_replication_slot('%s', 'pgoutput')), re-seed the consumers from a bootstrap "+
		"snapshot and restart capture with an empty relay state", what, lsnString(e.SCN), e.Slot, e.Slot)
	if e.Cause != nil {
		s += " (server: " + e.Cause.Error() + ")"
	}
	return s
}

func (e *SlotLostError) Unwrap() error { return e.Cause }

// ErrDecode is wrapped by errors about stream content the adapter cannot
// decode faithfully. Running again would meet the same content.
var ErrDecode = errors.New("databus: postgres: cannot decode the replication stream")

// ErrNotOpen is returned by Run before a successful Open.
var ErrNotOpen = errors.New("databus: postgres source: Run before Open")

// ErrClosed is returned by Open and Run after Close.
var ErrClosed = errors.New("databus: postgres source is closed")

// SQLSTATE codes the adapter acts on.
const (
	sqlInvalidPassword      = "28P01"
	sqlInvalidAuthorization = "28000"
	sqlInsufficientPriv     = "42501"
	sqlUndefinedObject      = "42704"
	sqlObjectInUse          = "55006" // replication slot is active for another PID
	sqlPrerequisiteState    = "55000" // for example a slot that can no longer give changes
	sqlInvalidParameter     = "22023"
	sqlFeatureNotSupported  = "0A000"
	sqlInvalidCatalogName   = "3D000" // database does not exist
)

// retryable is the one place that decides whether a failed replication
// session is worth a reconnection: network failures, server restarts and a
// slot still held by a dying session are; refusals, lost slots,
// undecodable content and bad configuration are not.
func retryable(err error) bool {
	var (
		setting *SettingError
		lost    *SlotLostError
		pgErr   *pgconn.PgError
	)
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.As(err, &setting), errors.As(err, &lost),
		errors.Is(err, ErrDecode), errors.Is(err, ErrConfig), errors.Is(err, ErrNotOpen), errors.Is(err, ErrClosed),
		errors.Is(err, schema.ErrInvalid), errors.Is(err, errStore):
		return false
	case errors.As(err, &pgErr):
		switch pgErr.Code {
		case sqlInvalidPassword, sqlInvalidAuthorization, sqlInsufficientPriv, sqlUndefinedObject,
			sqlPrerequisiteState, sqlInvalidParameter, sqlFeatureNotSupported, sqlInvalidCatalogName:
			return false
		}
		// Everything else, 55006 (slot active: our previous session may not
		// have ended yet) and the 57P0x shutdown codes included, is worth
		// another try.
		return true
	}
	return true
}

// errStore is wrapped by errors persisting the schema history.
var errStore = errors.New("databus: postgres: schema history")
