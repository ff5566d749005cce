// Package tpmdev is dpsd's only door to the TPM 2.0: it opens the device,
// serializes and counts every command, and offers the few operations the
// daemon needs (EK, SRK, ownership, sealing, credential activation and import,
// HMAC, fingerprint). It knows nothing about Azure beyond the EK templates and
// the key blob type it imports.
//
// Every TPM object or session a method creates is flushed before the method
// returns, on success and on failure, so a shared TPM is left as it was found.
// Authorization values are sent in password sessions and a refused one is
// never retried: for DA-protected entities each failure counts toward the
// TPM's dictionary-attack lockout.
package tpmdev
