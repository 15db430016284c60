package main

import (
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

func newRoot() *cobra.Command {
	var level string
	root := &cobra.Command{
		Use:           "databus",
		Short:         "Change data capture: stream every committed change of a database to any number of consumers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		var l slog.Level
		if err := l.UnmarshalText([]byte(level)); err != nil {
			return usageError("--log-level %q: want debug, info, warn or error", level)
		}
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})))
		return nil
	}
	root.AddCommand(newRelayCmd(), newBootstrapCmd(), newTailCmd(), newDemoCmd())
	return root
}
