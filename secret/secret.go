// Package secret holds the one string type configuration structs use for
// passwords, tokens and connection strings: it never shows in formatted
// output, logs, or dumped JSON/YAML, while still decoding from them.
package secret

import (
	"encoding/json"
	"log/slog"
	"strconv"
)

// String is a string that never shows in logs or formatted output. Use
// string(s) where the value itself is needed.
type String string

const redacted = "[redacted]"

// String returns a placeholder ("" for an empty secret), never the secret.
func (s String) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString returns the quoted placeholder, for %#v.
func (s String) GoString() string { return strconv.Quote(s.String()) }

// LogValue keeps the secret out of slog output.
func (s String) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON writes the placeholder, so a dumped configuration does not
// leak the secret.
func (s String) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalYAML writes the placeholder.
func (s String) MarshalYAML() (any, error) { return s.String(), nil }

// UnmarshalJSON reads the secret from a JSON string.
func (s *String) UnmarshalJSON(b []byte) error {
	var v string
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = String(v)
	return nil
}
