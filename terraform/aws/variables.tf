variable "region" {
  description = "AWS region of the demo. It needs at least `zone_count` availability zones."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Prefix of every resource's name, and the value of the `fleetscale:demo` tag on all of them."
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
  description = "The fleet's name in the agent's config, and the value of the `fleetscale:fleet` tag on its Auto Scaling group (propagated to its instances), its target group and the agent's role, which may only resize that group, mark its instances and deregister them from that target group."
  type        = string
  default     = "web"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.fleet_name))
    error_message = "fleet_name: 1 to 31 characters, lower-case letters, digits and '-', starting with a letter."
  }
}

variable "zone_count" {
  description = "Availability zones the fleet spreads over (one private subnet each)."
  type        = number
  default     = 2

  validation {
    condition     = var.zone_count >= 2 && var.zone_count <= 6
    error_message = "zone_count: from 2 to 6."
  }
}

variable "vpc_cidr" {
  description = "Address range of the demo's VPC (a /16 keeps the subnet arithmetic simple)."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && endswith(var.vpc_cidr, "/16")
    error_message = "vpc_cidr: an IPv4 /16, such as 10.42.0.0/16."
  }
}

variable "ami_id" {
  description = "AMI of every VM. Default: the newest official Debian 12 (bookworm) amd64 image. Another image must be Debian-based with cloud-init, and x86_64 unless the instance types change too."
  type        = string
  default     = null
}

variable "fleet_instance_type" {
  description = "Instance type of the fleet's instances (the launch template the Auto Scaling group launches)."
  type        = string
  default     = "t3.micro"
}

variable "agent_instance_type" {
  description = "Instance type of the agent's VM. Building the agent from git needs the 2 GiB of a t3.small (plus the swap file the install script adds)."
  type        = string
  default     = "t3.small"
}

variable "etcd_instance_type" {
  description = "Instance type of the etcd VM (with `high_availability`)."
  type        = string
  default     = "t3.micro"
}

variable "monitor_instance_type" {
  description = "Instance type of the VM that runs Prometheus, Grafana and the load generator."
  type        = string
  default     = "t3.small"
}

variable "root_volume_size" {
  description = "Size in GiB of each VM's encrypted gp3 root volume."
  type        = number
  default     = 16
}

variable "min_instances" {
  description = "Fewest fleet instances: the Auto Scaling group's min_size and initial desired capacity, and the agent's guards.min."
  type        = number
  default     = 2
}

variable "max_instances" {
  description = "Most fleet instances: the Auto Scaling group's max_size and the agent's guards.max."
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
  description = "Time from launch until a fleet instance serves (boot, package install, health check), in the agent's duration format."
  type        = string
  default     = "180s"
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
  description = "HTTPS URL of a fleetscale release binary for Linux x86_64 (a bare binary or a .tar.gz holding one), built with the `aws` feature. Empty: the agent's VM builds fleetscale from `agent_git_url` with cargo at first boot (slow)."
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
