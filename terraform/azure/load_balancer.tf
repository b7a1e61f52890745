# An internal Standard Load Balancer in front of the scale set, zone-redundant. The scale
# set's instances join its backend pool through their network profile, so instances the
# agent adds are balanced to without anything else.

resource "azurerm_lb" "fleet" {
  name                = "${var.name}-${var.fleet_name}"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  sku                 = "Standard"
  tags                = local.tags

  frontend_ip_configuration {
    name                          = "fleet"
    subnet_id                     = azurerm_subnet.fleet.id
    private_ip_address_allocation = "Static"
    private_ip_address            = local.load_balancer_ip
    zones                         = var.zones
  }
}

resource "azurerm_lb_backend_address_pool" "fleet" {
  name            = "fleet"
  loadbalancer_id = azurerm_lb.fleet.id
}

resource "azurerm_lb_probe" "fleet" {
  name                = "healthz"
  loadbalancer_id     = azurerm_lb.fleet.id
  protocol            = "Http"
  port                = 80
  request_path        = "/healthz"
  interval_in_seconds = 5
  number_of_probes    = 2
}

resource "azurerm_lb_rule" "http" {
  name                           = "http"
  loadbalancer_id                = azurerm_lb.fleet.id
  protocol                       = "Tcp"
  frontend_port                  = 80
  backend_port                   = 80
  frontend_ip_configuration_name = "fleet"
  backend_address_pool_ids       = [azurerm_lb_backend_address_pool.fleet.id]
  probe_id                       = azurerm_lb_probe.fleet.id
  # Outbound traffic leaves through the NAT gateway.
  disable_outbound_snat   = true
  idle_timeout_in_minutes = 4
}
