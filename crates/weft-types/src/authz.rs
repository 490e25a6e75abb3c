//! Roles and permissions: the one permission matrix of Weft. Every route names the
//! [`Permission`] it needs; [`Role::allows`] is the only place that decides.

use std::fmt;

/// A member's or API key's role in a workspace, weakest first (the order is the hierarchy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads everything in the workspace.
    Viewer,
    /// Viewer, plus manages flows and runs.
    Editor,
    /// Editor, plus manages credentials, API keys and members.
    Admin,
    /// Admin, plus manages the workspace and the tenant.
    Owner,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Editor, Role::Admin, Role::Owner];

    /// The role's name as used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may do what `p` guards.
    pub fn allows(self, p: Permission) -> bool {
        self >= p.least_role()
    }

    /// Whether a holder of this role may hand out `other` (a key or a membership): never a
    /// role above one's own, so an admin cannot mint an owner.
    pub fn may_grant(self, other: Role) -> bool {
        self.allows(Permission::KeysManage) && other <= self
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request needs to be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read flows, runs, logs, connectors, the workspace.
    Read,
    /// Create, change, publish and delete flows.
    FlowsWrite,
    /// Start, cancel, retry and replay runs.
    RunsWrite,
    /// Create and delete credentials.
    CredentialsWrite,
    /// Create, list and revoke API keys.
    KeysManage,
    /// Add, change and remove members.
    MembersManage,
    /// Read the audit trail.
    AuditRead,
    /// Create and change workspaces of the tenant.
    WorkspaceManage,
    /// Change the tenant itself.
    TenantManage,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 9] = [
        Permission::Read,
        Permission::FlowsWrite,
        Permission::RunsWrite,
        Permission::CredentialsWrite,
        Permission::KeysManage,
        Permission::MembersManage,
        Permission::AuditRead,
        Permission::WorkspaceManage,
        Permission::TenantManage,
    ];

    /// The weakest role that holds this permission: the matrix, in one table.
    pub fn least_role(self) -> Role {
        match self {
            Permission::Read => Role::Viewer,
            Permission::FlowsWrite | Permission::RunsWrite => Role::Editor,
            Permission::CredentialsWrite
            | Permission::KeysManage
            | Permission::MembersManage
            | Permission::AuditRead => Role::Admin,
            Permission::WorkspaceManage | Permission::TenantManage => Role::Owner,
        }
    }

    /// The OAuth-style scope name used in the OpenAPI description (`flows:write`).
    pub fn scope(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::FlowsWrite => "flows:write",
            Permission::RunsWrite => "runs:write",
            Permission::CredentialsWrite => "credentials:write",
            Permission::KeysManage => "keys:manage",
            Permission::MembersManage => "members:manage",
            Permission::AuditRead => "audit:read",
            Permission::WorkspaceManage => "workspace:manage",
            Permission::TenantManage => "tenant:manage",
        }
    }

    /// Parses a scope name.
    pub fn from_scope(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.scope() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix() {
        use Permission::*;
        let check = |role: Role, allowed: &[Permission]| {
            for p in Permission::ALL {
                assert_eq!(role.allows(p), allowed.contains(&p), "{role} {p:?}");
            }
        };
        check(Role::Viewer, &[Read]);
        check(Role::Editor, &[Read, FlowsWrite, RunsWrite]);
        check(
            Role::Admin,
            &[
                Read,
                FlowsWrite,
                RunsWrite,
                CredentialsWrite,
                KeysManage,
                MembersManage,
                AuditRead,
            ],
        );
        check(Role::Owner, &Permission::ALL);
    }

    #[test]
    fn grants_never_exceed_the_granter() {
        assert!(Role::Admin.may_grant(Role::Admin));
        assert!(!Role::Admin.may_grant(Role::Owner));
        assert!(Role::Owner.may_grant(Role::Owner));
        assert!(!Role::Editor.may_grant(Role::Viewer));
    }

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        for p in Permission::ALL {
            assert_eq!(Permission::from_scope(p.scope()), Some(p));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
