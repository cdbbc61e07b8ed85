package scalesim

import (
	"fmt"
	"strings"
	"testing"
	"text/tabwriter"
)

// report is the table of figures a scenario logs at its end.
type report struct {
	rows [][3]string // figure, value, goal
}

// add adds a figure; goal says what it should be and whether it is met, or
// is "" for a figure with no goal.
func (r *report) add(figure, goal string, format string, args ...any) {
	r.rows = append(r.rows, [3]string{figure, fmt.Sprintf(format, args...), goal})
}

// goal formats a goal and whether it is met.
func goal(want string, met bool) string {
	if met {
		return want + ": met"
	}
	return want + ": NOT MET"
}

// log writes the table through t.Logf, in one call so that it stays whole.
func (r *report) log(t *testing.T, title string) {
	t.Helper()
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "%s\n", title)
	for _, row := range r.rows {
		fmt.Fprintf(w, "  %s\t%s\t%s\n", row[0], row[1], row[2])
	}
	_ = w.Flush() // writes to a strings.Builder, which cannot fail
	t.Logf("\n%s", b.String())
}
