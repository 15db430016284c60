package secret

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestRedacted(t *testing.T) {
	s := String("hunter2")
	var log strings.Builder
	slog.New(slog.NewTextHandler(&log, nil)).Info("x", "pw", s)
	j, _ := json.Marshal(struct{ P String }{s})
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", s, s, s, s), log.String(), string(j)} {
		if strings.Contains(out, "hunter2") {
			t.Errorf("the secret leaked: %s", out)
		}
	}
	var back struct{ P String }
	if err := json.Unmarshal([]byte(`{"P":"hunter2"}`), &back); err != nil || string(back.P) != "hunter2" {
		t.Errorf("decoded %q, %v", string(back.P), err)
	}
	if String("").String() != "" {
		t.Error("an empty secret renders as a placeholder")
	}
}
