//! plinth-init: PID 1 of the Plinth node image. Takes no arguments; everything comes
//! from the kernel command line (`plinth.server=`, `plinth.ca=`, `plinth.token=`,
//! `plinth.ntp=`).

fn main() {
    plinth_provisioner::node::run()
}
