package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// flagSet is a command's flags, with its usage text. Its usage lists only
// the command's own flags.
type flagSet struct {
	*flag.FlagSet
	synopsis, doc string
}

func newFlagSet(name, synopsis, doc string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parse errors are returned, and printed once by run
	fs.Usage = func() {}
	return &flagSet{FlagSet: fs, synopsis: synopsis, doc: doc}
}

// parse parses args, flags and positional arguments in any order ("--"
// ends the flags). On -h or --help it prints the usage to stdout and
// returns flag.ErrHelp; a bad flag is a usage error.
func (fs *flagSet) parse(args []string, stdout io.Writer) (positional []string, err error) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.printUsage(stdout)
				return nil, err
			}
			return nil, usagef("%v", err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func (fs *flagSet) printUsage(w io.Writer) {
	var b bytes.Buffer
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprintf(w, "usage: shardflow %s\n\n%s\n\nflags:\n%s", fs.synopsis, strings.TrimSpace(fs.doc), b.String())
}

// noArgs rejects positional arguments of a command that takes none.
func noArgs(positional []string) error {
	if len(positional) > 0 {
		return usagef("unexpected argument %q", positional[0])
	}
	return nil
}

// logLevel is the --log-level flag.
type logLevel struct{ slog.Level }

func (l *logLevel) String() string { return strings.ToLower(l.Level.String()) }

func (l *logLevel) Set(s string) error {
	switch strings.ToLower(s) {
	case "debug":
		l.Level = slog.LevelDebug
	case "info":
		l.Level = slog.LevelInfo
	case "warn", "warning":
		l.Level = slog.LevelWarn
	case "error":
		l.Level = slog.LevelError
	default:
		return fmt.Errorf("want debug, info, warn or error")
	}
	return nil
}

// registerLogLevel adds --log-level and returns a function that builds the
// logger it asks for: text on stderr.
func registerLogLevel(fs *flagSet, stderr io.Writer) func() *slog.Logger {
	l := &logLevel{slog.LevelWarn}
	fs.Var(l, "log-level", "log to stderr at this level and above: debug, info, warn (retried failures) or error")
	return func() *slog.Logger {
		return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: l.Level}))
	}
}

// defaultShutdownTimeout is below Kubernetes' default 30 s grace period, so
// a pod stops on its own before it is killed.
const defaultShutdownTimeout = 20 * time.Second

// registerShutdownTimeout adds --shutdown-timeout.
func registerShutdownTimeout(fs *flagSet) *time.Duration {
	return fs.Duration("shutdown-timeout", defaultShutdownTimeout,
		"after SIGINT or SIGTERM, how long the graceful stop (drain, flush, final checkpoint) may take; "+
			"records still unwritten then are counted, and the exit status is 1. A second signal exits at once")
}

func checkShutdownTimeout(d time.Duration) error {
	if d <= 0 {
		return usagef("--shutdown-timeout %v: want a positive duration", d)
	}
	return nil
}

// interrupted is the cause of the context of a command stopped by a
// signal: the first SIGINT or SIGTERM.
type interrupted struct {
	sig os.Signal
	at  time.Time
}

func (e *interrupted) Error() string { return "interrupted by " + e.sig.String() }

// shutdownDeadline is when a command stopping because ctx ended must be
// done: timeout after the signal, or after now when ctx ended otherwise.
func shutdownDeadline(ctx context.Context, timeout time.Duration) time.Time {
	if in, ok := errors.AsType[*interrupted](context.Cause(ctx)); ok {
		return in.at.Add(timeout)
	}
	return time.Now().Add(timeout)
}

// shutdownContext is the context of a command's shutdown work (closing a
// sink or a producer): it outlives ctx, up to the shutdown deadline.
func shutdownContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithDeadline(context.WithoutCancel(ctx), shutdownDeadline(ctx, timeout))
}

// shutdownGrace is how long after the shutdown deadline a command's own
// bounded steps are given to report, before runBounded gives up on them.
const shutdownGrace = 2 * time.Second

// errShutdownTimeout is returned by runBounded when the command was still
// stopping past its deadline.
var errShutdownTimeout = errors.New("the graceful stop did not finish within --shutdown-timeout")

// runBounded runs fn and returns its error; once ctx ended, it waits for
// fn at most until the shutdown deadline (plus shutdownGrace) and then
// returns errShutdownTimeout, leaving fn behind: the process exits next.
// Every step of fn is bounded by the deadline already; this is the
// backstop for a step that is not.
func runBounded(ctx context.Context, timeout time.Duration, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(time.Until(shutdownDeadline(ctx, timeout).Add(shutdownGrace)))
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%w (%v)", errShutdownTimeout, timeout)
	}
}
