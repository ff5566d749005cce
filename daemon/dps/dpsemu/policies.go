package dpsemu

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// CredentialPolicy stands in for an Azure Device Registry credential
// policy: which CA issues an enrollment's operational certificates (here
// always the emulator's device issuer) and for how long they are valid.
type CredentialPolicy struct {
	Name string `json:"name"`
	// CertificateLifetime is a Go duration ("720h", "90s"): at least a
	// second, so that tests can watch a certificate expire.
	CertificateLifetime string `json:"certificateLifetime"`
}

// lifetime returns the parsed CertificateLifetime; putPolicy validated it.
func (p *CredentialPolicy) lifetime() time.Duration {
	d, _ := time.ParseDuration(p.CertificateLifetime)
	return d
}

// errPolicy is the class of admin errors about a policy request;
// errPolicyInUse refuses to delete a policy an enrollment names.
var (
	errPolicy      = errors.New("invalid credential policy")
	errPolicyInUse = errors.New("credential policy in use")
)

// maxPolicyLifetime keeps an issued certificate inside the issuing CA's
// life.
const maxPolicyLifetime = 5 * 365 * 24 * time.Hour

// validPolicyName: 1 to 64 ASCII letters, digits, '-', '_' and '.'.
func validPolicyName(name string) bool { return validName(name, 64, "-_.") }

// putPolicy creates or replaces a credential policy.
func (s *service) putPolicy(name string, p CredentialPolicy) (CredentialPolicy, error) {
	if p.Name == "" {
		p.Name = name
	}
	switch {
	case !validPolicyName(name):
		return p, fmt.Errorf("%w: name %q: 1 to 64 letters, digits, '-', '_' or '.'", errPolicy, name)
	case p.Name != name:
		return p, fmt.Errorf("%w: name %q differs from the path's %q", errPolicy, p.Name, name)
	}
	d, err := time.ParseDuration(p.CertificateLifetime)
	if err != nil || d < time.Second || d > maxPolicyLifetime {
		return p, fmt.Errorf("%w: certificateLifetime %q: want a duration from 1s to %v, such as \"720h\"", errPolicy, p.CertificateLifetime, maxPolicyLifetime)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, existed := s.data.CredentialPolicies[name]
	s.data.CredentialPolicies[name] = &p
	if err := s.saveLocked(); err != nil {
		if existed {
			s.data.CredentialPolicies[name] = old
		} else {
			delete(s.data.CredentialPolicies, name)
		}
		return p, fmt.Errorf("writing the registry: %w", err)
	}
	return p, nil
}

// policy returns a credential policy by name.
func (s *service) policy(name string) (CredentialPolicy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.data.CredentialPolicies[name]
	if !ok {
		return CredentialPolicy{}, false
	}
	return *p, true
}

// deletePolicy removes a policy no enrollment names.
func (s *service) deletePolicy(name string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.data.CredentialPolicies[name]
	if !ok {
		return false, nil
	}
	for _, e := range s.data.Enrollments {
		if e.CredentialPolicyName == name {
			return false, fmt.Errorf("%w: enrollment %s names it", errPolicyInUse, e.RegistrationID)
		}
	}
	delete(s.data.CredentialPolicies, name)
	if err := s.saveLocked(); err != nil {
		s.data.CredentialPolicies[name] = p
		return false, fmt.Errorf("writing the registry: %w", err)
	}
	return true, nil
}

func (s *service) adminPutPolicy(w http.ResponseWriter, r *http.Request) {
	var p CredentialPolicy
	if !readAdminJSON(w, r, &p, true) {
		return
	}
	stored, err := s.putPolicy(r.PathValue("name"), p)
	switch {
	case errors.Is(err, errPolicy):
		adminError(w, http.StatusBadRequest, codeAdminBadRequest, "%v", err)
		return
	case err != nil:
		adminError(w, http.StatusInternalServerError, codeInternal, "%v", err)
		return
	}
	s.log.Info("credential policy stored", "name", stored.Name, "certificateLifetime", stored.CertificateLifetime)
	writeJSON(w, http.StatusOK, stored)
}

func (s *service) adminGetPolicy(w http.ResponseWriter, r *http.Request) {
	p, ok := s.policy(r.PathValue("name"))
	if !ok {
		adminError(w, http.StatusNotFound, codeAdminNotFound, "no credential policy %q", r.PathValue("name"))
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *service) adminDeletePolicy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ok, err := s.deletePolicy(name)
	if errors.Is(err, errPolicyInUse) {
		adminError(w, http.StatusConflict, codeAdminConflict, "%v", err)
		return
	}
	s.answerDelete(w, "credential policy", "name", name, ok, err)
}

// adminDeviceRoot answers the device root CA, PEM: what the hub trusts
// for operational certificates, and what an app checking a device's
// certificate should trust.
func (s *service) adminDeviceRoot(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(s.issuer.rootPEM())
}
