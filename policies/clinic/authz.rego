# wardmesh clinic starter policy.
#
# Entrypoint: data.wardmesh.authz.decision -> {allow, rule, reason, obligations}.
# Input: the document in ../README.md (schema: ../input.schema.json).
# Data:  data.consent[patient] = {"part2": bool, "purposes": {PURPOSE: bool}}
#
# Rules are tried in order; the first that applies decides. Anything no rule
# allows is denied by `default-deny`.
package wardmesh.authz

default decision := {
	"allow": false,
	"rule": "default-deny",
	"reason": "no rule allows this request",
	"obligations": [],
}

decision := refuse("step-up-mfa", "mfa_required") if {
	needs_step_up
} else := permit("break-glass", "emergency access under an active break-glass grant", ["audit", "review"]) if {
	break_glass
} else := refuse("consent-refused", "the patient refused consent for this purpose of use") if {
	patient_id
	consent_refused
} else := refuse("part2-consent-required", "42 CFR Part 2 record: explicit patient consent for this purpose is required") if {
	patient_id
	part2
	not consent_granted
} else := permit("clinician-notes-treat", "clinician with MFA reading notes for treatment", []) if {
	clinician_reads_notes
} else := permit("billing-read", "billing staff reading billing records for payment", []) if {
	billing_reads_billing
}

permit(rule, reason, obligations) := {
	"allow": true,
	"rule": rule,
	"reason": reason,
	"obligations": obligations,
}

refuse(rule, reason) := {
	"allow": false,
	"rule": rule,
	"reason": reason,
	"obligations": [],
}

# --- who is asking --------------------------------------------------------

# Role checks are rules, not a function, so each is evaluated once per request.
clinician if "clinician" in input.user.roles

billing_staff if "billing" in input.user.roles

mfa if input.user.mfa == true

risk_flagged if input.context.risk.flagged == true

purpose := input.context.purpose_of_use

# Step-up: a risk-flagged user, or a clinician about to read notes, without MFA.
needs_step_up if {
	input.user != null
	risk_flagged
	not mfa
}

needs_step_up if {
	clinician
	notes_read
	purpose == "TREAT"
	not mfa
}

# --- what is asked for ----------------------------------------------------

read_methods := {"GET", "HEAD"}

# "/patients/p-1001/notes" -> ["", "patients", "p-1001", "notes"]
segments := split(trim_right(input.request.path, "/"), "/")

patient_id := segments[2] if {
	count(segments) == 4
	segments[0] == ""
	segments[1] == "patients"
	segments[2] != ""
}

record_kind := segments[3] if patient_id

is_read if input.request.method in read_methods

notes_read if {
	is_read
	record_kind == "notes"
}

billing_read if {
	is_read
	record_kind == "billing"
}

# --- consent (data.json, or the request's consent record) -----------------

part2 if data.consent[patient_id].part2 == true

part2 if input.context.consent.part2 == true

consent_granted if data.consent[patient_id].purposes[purpose] == true

consent_granted if input.context.consent.purposes[purpose] == true

consent_refused if data.consent[patient_id].purposes[purpose] == false

consent_refused if input.context.consent.purposes[purpose] == false

# --- the allow rules --------------------------------------------------------

# Break-glass: an active grant (the agent passes only grants valid now) lets a
# clinician read a patient's records for emergency treatment, Part 2 included
# (42 CFR 2.51); every use is audited and queued for review.
break_glass if {
	purpose == "ETREAT"
	input.context.break_glass != null
	clinician
	patient_id
	is_read
}

clinician_reads_notes if {
	clinician
	mfa
	purpose == "TREAT"
	notes_read
}

# Billing staff see billing records only (minimum necessary), for payment.
billing_reads_billing if {
	billing_staff
	purpose == "HPAYMT"
	billing_read
}
