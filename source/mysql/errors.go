package mysql

import (
	"context"
	"errors"
	"fmt"
	"strings"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	driver "github.com/go-sql-driver/mysql"

	"github.com/databus-go/databus/schema"
)

// SettingError refuses a server whose settings make capture impossible or
// unfaithful. It names the setting, its value and the value to set.
type SettingError struct {
	Flavor  string // "MariaDB" or "MySQL"
	Setting string // for example "binlog_row_metadata"
	Value   string // the server's value
	Want    string // the value to set
	Why     string // what the setting is needed for
	How     string // how to set it; default "my.cnf or SET GLOBAL"
}

func (e *SettingError) Error() string {
	how := e.How
	if how == "" {
		how = "my.cnf or SET GLOBAL"
	}
	return fmt.Sprintf("databus: %s setting %s is %s; set %s=%s (%s) %s",
		e.Flavor, e.Setting, e.Value, e.Setting, e.Want, how, e.Why)
}

// BinlogPurgedError says that the binlog file a run must resume from is no
// longer on the server: the changes after the resume position are lost to
// this relay.
type BinlogPurgedError struct {
	File   string // the binlog file the run needed
	Pos    uint32 // the position in it
	SCN    uint64 // the SCN of the resume position
	Oldest string // the oldest binlog file the server still has ("" if unknown)
	Cause  error  // the server's error, if it reported one
}

func (e *BinlogPurgedError) Error() string {
	oldest := ""
	if e.Oldest != "" {
		oldest = fmt.Sprintf(" (the oldest it has is %s)", e.Oldest)
	}
	return fmt.Sprintf("databus: binlog file %s is no longer on the server%s, so capture cannot resume at %s:%d (SCN %d): "+
		"the changes after that position are lost to this relay. Re-seed the consumers from a bootstrap snapshot and restart "+
		"capture from the current position (an empty relay state), and raise the server's binlog retention "+
		"(binlog_expire_logs_seconds, or expire_logs_days) above the longest relay outage",
		e.File, oldest, e.File, e.Pos, e.SCN)
}

func (e *BinlogPurgedError) Unwrap() error { return e.Cause }

// ErrPositionBackwards says that the binlog restarted below a position
// already emitted (RESET MASTER, or a different server behind the same
// address): SCNs would repeat, so capture stops.
var ErrPositionBackwards = errors.New("databus: binlog position went backwards (RESET MASTER, or another server at this address)")

// ErrDecode is wrapped by errors about binlog content the adapter cannot
// decode faithfully. Running again would meet the same content.
var ErrDecode = errors.New("databus: cannot decode binlog")

// ErrNotOpen is returned by Run before a successful Open.
var ErrNotOpen = errors.New("databus: mysql source: Run before Open")

// cleanError hides the stack traces go-mysql's errors print when formatted
// with %+v (as slog does), keeping the chain for errors.As.
func cleanError(err error) error {
	if err == nil {
		return nil
	}
	return &goMySQLError{err}
}

type goMySQLError struct{ err error }

func (e *goMySQLError) Unwrap() error { return e.err }

// Error keeps the message lines and drops the stack frames: a frame is a
// function line followed by a tab-indented file:line line.
func (e *goMySQLError) Error() string {
	lines := strings.Split(e.err.Error(), "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(l, "\t") {
			continue
		}
		if i+1 < len(lines) && strings.HasPrefix(lines[i+1], "\t") {
			i++ // a function name and its location
			continue
		}
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, ": ")
}

// Server error codes the adapter acts on.
const (
	erAccessDenied          = 1045
	erDBAccessDenied        = 1044
	erSpecificAccessDenied  = 1227
	erTableAccessDenied     = 1142
	erMasterFatalReadingLog = 1236
)

// retryable is the one place that decides whether a failed stream is worth
// a reconnection: network failures and server restarts are; refusals,
// missing binlogs, undecodable content and position errors are not.
func retryable(err error) bool {
	var (
		setting *SettingError
		purged  *BinlogPurgedError
		myErr   *gomysql.MyError
		drvErr  *driver.MySQLError
	)
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.As(err, &setting), errors.As(err, &purged),
		errors.Is(err, ErrDecode), errors.Is(err, ErrPositionBackwards), errors.Is(err, ErrConfig),
		errors.Is(err, schema.ErrInvalid):
		return false
	case errors.As(err, &myErr):
		return !fatalCode(myErr.Code)
	case errors.As(err, &drvErr):
		return !fatalCode(drvErr.Number)
	}
	return true
}

func fatalCode(code uint16) bool {
	switch code {
	case erAccessDenied, erDBAccessDenied, erSpecificAccessDenied, erTableAccessDenied, erMasterFatalReadingLog:
		return true
	}
	return false
}
