variable "location" {
  description = "Azure region of the demo. It must offer availability zones (the fleet spreads over `zones`)."
  type        = string
  default     = "westeurope"
}

variable "name" {
  description = "Name of the resource group and prefix of every resource's name."
  type        = string
  default     = "fleetscale-demo"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name))
    error_message = "name: 2 to 20 characters, lower-case letters, digits and '-', starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

variable "fleet_name" {
  description = "The fleet's name in the agent's config, and the `fleetscale:fleet` tag of its scale set."
  type        = string
  default     = "web"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.fleet_name))
    error_message = "fleet_name: 1 to 31 characters, lower-case letters, digits and '-', starting with a letter."
  }
}

variable "zones" {
  description = "Availability zones the scale set and the load balancer's frontend span."
  type        = list(string)
  default     = ["1", "2", "3"]

  validation {
    condition     = length(var.zones) >= 2
    error_message = "zones: at least two."
  }
}

variable "vnet_cidr" {
  description = "Address range of the demo's virtual network (a /16 keeps the subnet arithmetic simple)."
  type        = string
  default     = "10.43.0.0/16"

  validation {
    condition     = can(cidrhost(var.vnet_cidr, 0)) && endswith(var.vnet_cidr, "/16")
    error_message = "vnet_cidr: an IPv4 /16, such as 10.43.0.0/16."
  }
}

variable "fleet_vm_size" {
  description = "VM size of the scale set's instances."
  type        = string
  default     = "Standard_B1s"
}

variable "etcd_vm_size" {
  description = "VM size of the etcd VM (with `high_availability`)."
  type        = string
  default     = "Standard_B1s"
}

variable "agent_vm_size" {
  description = "VM size of the agent's VM. Building the agent from git needs the 4 GiB of a Standard_B2s."
  type        = string
  default     = "Standard_B2s"
}

variable "monitor_vm_size" {
  description = "VM size of the VM that runs Prometheus, Grafana and the load generator."
  type        = string
  default     = "Standard_B2s"
}

variable "os_disk_type" {
  description = "Storage type of every VM's OS disk (encrypted at rest by the platform; see encryption_at_host)."
  type        = string
  default     = "StandardSSD_LRS"
}

variable "encryption_at_host" {
  description = "Encrypt temporary disks and caches on the hosts as well (the subscription needs the Microsoft.Compute/EncryptionAtHost feature registered). Disks are encrypted at rest either way."
  type        = bool
  default     = true
}

variable "admin_ssh_public_key" {
  description = "SSH public key of the VMs' admin user (fleetscale). Default: a key generated here (output admin_ssh_private_key). No network path reaches SSH unless enable_bastion is set."
  type        = string
  default     = null
}

variable "operator_cidr" {
  description = "One address (a.b.c.d/32) allowed to reach Prometheus (9090) and Grafana (3000) on a public IP of the monitoring VM. Empty: no public IP, reach them through Azure Bastion (enable_bastion) or not at all."
  type        = string
  default     = ""

  validation {
    condition     = var.operator_cidr == "" || can(regex("^([0-9]{1,3}\\.){3}[0-9]{1,3}/32$", var.operator_cidr))
    error_message = "operator_cidr: a single address such as 203.0.113.7/32, or empty."
  }
}

variable "enable_bastion" {
  description = "Deploy Azure Bastion (Standard, with tunnelling) to reach the VMs' SSH and tunnel to Prometheus and Grafana without any public IP on them. Costs more than the rest of the demo."
  type        = bool
  default     = false
}

variable "min_instances" {
  description = "Fewest fleet instances (the agent's guards.min, and the scale set's size at creation)."
  type        = number
  default     = 2
}

variable "max_instances" {
  description = "Most fleet instances (the agent's guards.max)."
  type        = number
  default     = 12

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 100
    error_message = "max_instances: from 1 to 100."
  }
}

variable "max_step_up" {
  description = "Most instances the agent adds in one tick."
  type        = number
  default     = 4
}

variable "instance_capacity_rps" {
  description = "Requests per second one fleet instance serves: nginx on each instance answers 503 above it, and the agent's signal counts demand in units of it (per_instance)."
  type        = number
  default     = 40
}

variable "boot_delay" {
  description = "Time from launch until a fleet instance serves (boot, package install, health probe), in the agent's duration format."
  type        = string
  default     = "240s"
}

variable "agent_tick" {
  description = "How often the agent reconciles the fleet."
  type        = string
  default     = "60s"
}

variable "max_unserved" {
  description = "The dp policy's service target: the largest fraction of demand that may go unserved."
  type        = number
  default     = 0.001
}

variable "agent_binary_url" {
  description = "HTTPS URL of a fleetscale release binary for Linux x86_64 (a bare binary or a .tar.gz holding one), built with the `azure` feature. Empty: the agent's VM builds fleetscale from `agent_git_url` with cargo at first boot (slow)."
  type        = string
  default     = ""

  validation {
    condition     = var.agent_binary_url == "" || startswith(var.agent_binary_url, "https://")
    error_message = "agent_binary_url: an https:// URL, or empty to build from git."
  }
}

variable "agent_binary_sha256" {
  description = "SHA-256 of the file at `agent_binary_url`, checked before it is installed (recommended)."
  type        = string
  default     = ""
}

variable "agent_git_url" {
  description = "Git repository the agent is built from when `agent_binary_url` is empty."
  type        = string
  default     = "https://github.com/fleetscale/fleetscale"
}

variable "agent_git_branch" {
  description = "Branch of `agent_git_url` to build."
  type        = string
  default     = "main"
}

variable "enable_grafana" {
  description = "Install Grafana (from Grafana Labs' apt repository) on the monitoring VM, with the fleetscale dashboard."
  type        = bool
  default     = true
}

variable "load_peak_rps" {
  description = "Request rate of the demo trace's busiest minute when the load generator replays it."
  type        = number
  default     = 320
}

variable "load_speedup" {
  description = "How many times faster than real time the load generator replays the demo trace (6: a day in 4 hours)."
  type        = number
  default     = 6
}

variable "high_availability" {
  description = "Run two agents that coordinate through an etcd of their own (one more VM, Debian's etcd-server): each fleet is held by one agent, and the other takes over within the lease TTL when it dies."
  type        = bool
  default     = false
}
