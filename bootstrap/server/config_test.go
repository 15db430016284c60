package server

import (
	"errors"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	if d := (Config{}).WithDefaults(); d.Listen != DefaultListen || d.MaxBytes != DefaultMaxBytes || d.MaxRows != DefaultMaxRows {
		t.Errorf("defaults: %+v", d)
	}
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{Listen: "nohost"}, "listen"},
		{Config{Listen: "127.0.0.1:99999"}, "listen"},
		{Config{MaxBytes: 100}, "maxBytes"},
		{Config{MaxBytes: MaxMaxBytes + 1}, "maxBytes"},
		{Config{MaxRows: -1}, "maxRows"},
		{Config{MaxRows: MaxMaxRows + 1}, "maxRows"},
		{Config{AuthToken: "a b"}, "authToken"},
	} {
		err := tc.cfg.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%+v: %v; want an error naming %s", tc.cfg, err, tc.field)
		}
	}
	if err := (Config{AuthToken: "hunter2 x"}).Validate(); strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the error shows the token: %v", err)
	}
}
