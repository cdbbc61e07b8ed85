package awstest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// ChildMain is the TestMain of a test binary that also serves as a child
// process of its own tests (the re-exec pattern, see [StartChild]): when the
// environment variable envVar is "1" it runs child instead of the tests and
// exits, with status 1 and the error on stderr if child failed; otherwise it
// runs the tests.
func ChildMain(m *testing.M, envVar string, child func() error) {
	ServeChild(envVar, child)
	os.Exit(m.Run())
}

// ServeChild runs child and exits, as [ChildMain] does, when the environment
// variable envVar is "1", and returns otherwise. A package has one TestMain:
// its other kinds of child process call ServeChild from an init function.
func ServeChild(envVar string, child func() error) {
	if os.Getenv(envVar) != "1" {
		return
	}
	if err := child(); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Child is a copy of the running test binary started by [StartChild].
type Child struct {
	// Cmd is the running process: signal or kill it through Cmd.Process.
	Cmd    *exec.Cmd
	exited chan error
}

// StartChild starts the running test binary again, with no test selected
// and with env and envVar=1 added to its environment, so that its
// [ChildMain] runs the child instead of the tests. Each line the child
// writes to stderr is passed to onLine (without its newline), in order, on
// one goroutine. The child is killed when the test process dies
// (Pdeathsig) and at the end of the test.
func StartChild(t testing.TB, envVar string, env []string, onLine func(line string)) *Child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env[:len(env):len(env)], envVar+"=1")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &Child{Cmd: cmd, exited: make(chan error, 1)}
	go func() {
		r := bufio.NewReader(stderr)
		for {
			line, err := r.ReadString('\n')
			if line = strings.TrimSuffix(line, "\n"); line != "" {
				onLine(line)
			}
			if err != nil {
				_, _ = io.Copy(io.Discard, r)
				break
			}
		}
		// Wait closes stderr: only once it was read to its end.
		c.exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return c
}

// Exited delivers the child's exit status (the error of exec.Cmd.Wait) once
// it exited and its stderr was read to the end. It delivers one value: receive
// it once.
func (c *Child) Exited() <-chan error { return c.exited }
