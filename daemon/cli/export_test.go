package cli

// The human views, for the golden tests.
var (
	RenderStatus = renderStatus
	RenderChecks = renderChecks
)
